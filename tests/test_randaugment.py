"""FixMatch's strong augmentation: ranges, reproducibility, and each op against hand values."""

import pytest
import torch

from fewlabels.augment.randaugment import (
    RANDAUGMENT_OPS,
    StrongAugment,
    apply_op,
    autocontrast,
    cutout_squares,
    equalize,
    posterize,
    solarize_above,
)
from fewlabels.errors import UserError


def _batch(channels: int, size: int = 12, count: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.rand(count, channels, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("channels", [1, 3])
def test_strong_augment_keeps_range_shape_dtype_and_input(channels):
    images = _batch(channels)
    kept = images.clone()
    out = StrongAugment()(images, torch.Generator().manual_seed(1))
    assert out.shape == images.shape and out.dtype == images.dtype
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert torch.equal(images, kept)  # the input is not modified
    assert not torch.equal(out, images)


def test_strong_augment_is_reproducible_from_the_generator():
    images = _batch(3)
    augment = StrongAugment(n_ops=2, cutout=0.5)
    first = augment(images, torch.Generator().manual_seed(7))
    again = augment(images, torch.Generator().manual_seed(7))
    other = augment(images, torch.Generator().manual_seed(8))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_identity_only_configuration_returns_the_input():
    images = _batch(3)
    out = StrongAugment(ops=("identity",), cutout=0.0)(images, torch.Generator().manual_seed(0))
    assert torch.equal(out, images)
    out = StrongAugment(op_probability=0.0, cutout=0.0)(images, torch.Generator().manual_seed(0))
    assert torch.equal(out, images)


def test_cutout_fills_exactly_the_requested_square():
    images = torch.zeros(1, 3, 10, 10)
    # Side 4 at centre (row 4, column 5): rows 2..5, columns 3..6.
    out = cutout_squares(images, torch.tensor([[4, 5]]), torch.tensor([4]), fill=0.5)
    expected = torch.zeros(10, 10)
    expected[2:6, 3:7] = 0.5
    assert torch.equal(out[0, 0], expected) and torch.equal(out[0, 2], expected)
    # Clipped at the border: centre (0, 0), side 4 covers rows 0..1 and columns 0..1.
    corner = cutout_squares(images, torch.tensor([[0, 0]]), torch.tensor([4]))
    assert int((corner[0, 0] == 0.5).sum()) == 4


def test_strong_augment_cutout_is_a_square_of_half_the_side():
    images = torch.zeros(200, 1, 8, 8)
    augment = StrongAugment(ops=("identity",), cutout=0.5, random_cutout_size=False)
    out = augment(images, torch.Generator().manual_seed(0))
    filled = (out == 0.5).sum(dim=(1, 2, 3))
    rows = (out[:, 0] == 0.5).any(dim=2).sum(dim=1)
    cols = (out[:, 0] == 0.5).any(dim=1).sum(dim=1)
    assert bool(((out == 0.0) | (out == 0.5)).all())
    assert bool((filled == rows * cols).all())  # always a rectangle (a clipped square)
    inside = (rows == 4) & (cols == 4)
    assert int(filled.max()) == 16 and bool((filled[inside] == 16).all())
    assert int(inside.sum()) > 50  # centres 2..6 of 8 on both axes: ~39% of images


def test_solarize_posterize_autocontrast_hand_values():
    image = torch.tensor([[[[0.2, 0.6], [0.5, 0.9]]]])
    solarized = solarize_above(image, torch.tensor([0.5]))
    assert torch.allclose(solarized, torch.tensor([[[[0.2, 0.4], [0.5, 0.1]]]]))
    assert torch.equal(solarize_above(image, torch.tensor([1.5])), image)
    levels = torch.tensor([0.0, 37.0, 128.0, 255.0]).view(1, 1, 2, 2) / 255
    # Top 4 bits: q & 0xF0 -> 0, 32, 128, 240; top bit: 0, 0, 128, 128.
    four = posterize(levels, torch.tensor([4])) * 255
    assert torch.allclose(four.flatten(), torch.tensor([0.0, 32, 128, 240]), atol=1e-4)
    one = posterize(levels, torch.tensor([1])) * 255
    assert torch.allclose(one.flatten(), torch.tensor([0.0, 0, 128, 128]), atol=1e-4)
    assert torch.equal(posterize(image, torch.tensor([8])), image)
    stretched = autocontrast(torch.tensor([[[[0.2, 0.6], [0.6, 0.2]], [[0.3, 0.3], [0.3, 0.3]]]]))
    assert torch.allclose(stretched[0, 0], torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
    assert torch.allclose(stretched[0, 1], torch.full((2, 2), 0.3))  # a flat channel is kept


def test_equalize_matches_pil_rule_by_hand():
    # 400 pixels: 200 at level 10, 100 at 50, 100 at 90. The top level holds 100 pixels, so
    # step = (400 - 100) // 255 = 1 and level q maps to the count below it: 10 -> 0,
    # 50 -> 200, 90 -> 300 clipped to 255.
    levels = torch.cat([torch.full((200,), 10.0), torch.full((100,), 50.0),
                        torch.full((100,), 90.0)])
    image = (levels / 255).view(1, 1, 20, 20)
    out = equalize(image) * 255
    expected = torch.cat([torch.zeros(200), torch.full((100,), 200.0), torch.full((100,), 255.0)])
    assert torch.allclose(out.flatten(), expected, atol=1e-3)
    # Too few pixels below the top level (step = 0): the image is kept as it is.
    small = torch.tensor([[[[0.1, 0.2], [0.3, 0.4]]]])
    assert torch.equal(equalize(small), small)


IDENTITY_PARAMETER = {"brightness": 1.0, "color": 1.0, "contrast": 1.0, "sharpness": 1.0,
                      "posterize": 8.0, "solarize": 1.5, "rotate": 0.0, "shear_x": 0.0,
                      "shear_y": 0.0, "translate_x": 0.0, "translate_y": 0.0}


@pytest.mark.parametrize("name", ["identity", *IDENTITY_PARAMETER])
@pytest.mark.parametrize("channels", [1, 3])
def test_each_op_at_its_identity_parameter_returns_the_input(name, channels):
    images = _batch(channels, count=4)
    values = torch.full((4,), IDENTITY_PARAMETER.get(name, 0.0))
    assert torch.allclose(apply_op(name, images, values), images, atol=1e-6, rtol=0)


def test_every_op_is_covered_and_the_others_change_images():
    assert set(RANDAUGMENT_OPS) == {"identity", "autocontrast", "equalize", *IDENTITY_PARAMETER}
    images = torch.rand(2, 3, 20, 20, generator=torch.Generator().manual_seed(0)) * 0.5 + 0.25
    for name in ("autocontrast", "equalize"):
        assert not torch.allclose(apply_op(name, images), images)


def _bright_pixel(row: int, col: int, size: int = 8) -> torch.Tensor:
    image = torch.zeros(1, 1, size, size)
    image[0, 0, row, col] = 1.0
    return image


@pytest.mark.parametrize(("name", "value", "source", "target"), [
    ("translate_x", 0.25, (3, 2), (3, 4)),  # 0.25 of 8 pixels: two to the right
    ("translate_x", -0.25, (3, 2), (3, 0)),
    ("translate_y", 0.25, (3, 2), (5, 2)),  # two down
    ("shear_x", 0.4, (2, 5), (2, 4)),  # row 2 (centre y = 2.5) samples x + 1: moves left 1
    ("shear_y", 0.4, (5, 2), (4, 2)),  # column 2 (centre x = 2.5) samples y + 1: moves up 1
    ("rotate", 90.0, (0, 7), (0, 0)),  # counter-clockwise: the top-right corner goes top-left
])
def test_geometric_ops_move_a_bright_pixel_where_expected(name, value, source, target):
    out = apply_op(name, _bright_pixel(*source), torch.tensor([value]), fill=0.0)
    assert out.sum().item() == pytest.approx(1.0)
    assert out[0, 0, target[0], target[1]].item() == 1.0


def test_geometric_ops_fill_uncovered_area_with_gray():
    out = apply_op("translate_x", torch.zeros(1, 1, 8, 8), torch.tensor([0.25]))
    assert torch.equal(out[0, 0, :, :2], torch.full((8, 2), 0.5))
    assert torch.equal(out[0, 0, :, 2:], torch.zeros(8, 6))


def test_bad_configuration_is_a_user_error():
    with pytest.raises(UserError, match="choose from"):
        StrongAugment(ops=("identity", "blur"))
    with pytest.raises(UserError):
        StrongAugment(cutout=2.0)
