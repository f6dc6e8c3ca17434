"""Invariants of the batched augmentation ops and the view recipes (fast, CPU)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from fewlabels import augment as A
from fewlabels.errors import UserError


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny batches: one thread avoids waiting on a busy second core (the CPU is shared)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def batch(count: int = 8, channels: int = 3, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(count, channels, size, size, generator=gen(seed))


def uint8_batch(count: int = 8, channels: int = 3, size: int = 16) -> torch.Tensor:
    return torch.randint(0, 256, (count, channels, size, size), generator=gen(1),
                         dtype=torch.uint8)


OPS = {
    "crop": lambda x, g: A.random_resized_crop(x, 12, flip_p=0.5, generator=g),
    "flip": lambda x, g: A.horizontal_flip(x, generator=g),
    "jitter": lambda x, g: A.color_jitter(x, 0.4, 0.4, 0.4, 0.1, p=1.0, generator=g),
    "gray": lambda x, g: A.random_grayscale(x, p=0.5, generator=g),
    "blur": lambda x, g: A.gaussian_blur(x, (0.1, 2.0), 5, p=1.0, generator=g),
    "solarize": lambda x, g: A.solarize(x, 0.5, p=0.5, generator=g),
}


def all_ops(x: torch.Tensor, g: torch.Generator) -> dict[str, torch.Tensor]:
    return {name: op(x, g) for name, op in OPS.items()}


# Geometric ---------------------------------------------------------------------------------


def test_flip_twice_is_identity_and_flips_selected_images_only():
    x = batch()
    mask = torch.tensor([True, False] * 4)
    once = A.flip_where(x, mask)
    assert torch.equal(once[mask], x[mask].flip(-1)) and torch.equal(once[~mask], x[~mask])
    assert torch.equal(A.flip_where(once, mask), x)
    assert torch.equal(A.horizontal_flip(A.horizontal_flip(x, generator=gen(3)), generator=gen(3)),
                       x)


@pytest.mark.parametrize("image_size", [(32, 32), (20, 48)])
@pytest.mark.parametrize("scale,ratio", [((0.08, 1.0), (3 / 4, 4 / 3)), ((0.9, 1.0), (0.1, 10.0))])
def test_crop_boxes_and_grids_stay_inside_the_image(image_size, scale, ratio):
    boxes = A.sample_crop_boxes(4000, image_size, scale, ratio, generator=gen())
    left, top, width, height = boxes.unbind(1)
    assert (left >= 0).all() and (top >= 0).all() and (width > 0).all() and (height > 0).all()
    assert (left + width <= 1 + 1e-6).all() and (top + height <= 1 + 1e-6).all()
    area = width * height
    assert (area <= scale[1] + 1e-5).all()
    unclamped = (width < 1) & (height < 1)  # drawn exactly: area and aspect in range
    assert (area[unclamped] >= scale[0] - 1e-5).all()
    aspect = width * image_size[1] / (height * image_size[0])
    assert (aspect[unclamped] >= ratio[0] * (1 - 1e-4)).all()
    assert (aspect[unclamped] <= ratio[1] * (1 + 1e-4)).all()
    grid = A.crop_grid(boxes[:64], (9, 13))  # [64, 9, 13, 2]
    assert grid.shape == (64, 9, 13, 2) and (grid.abs() < 1).all()


def test_whole_image_crop_at_same_size_returns_the_image():
    x = batch(channels=1, size=28)
    same = A.random_resized_crop(x, 28, scale=(1.0, 1.0), ratio=(1.0, 1.0), generator=gen())
    torch.testing.assert_close(same, x, atol=1e-5, rtol=0)
    mirrored = A.random_resized_crop(x, 28, (1.0, 1.0), (1.0, 1.0), flip_p=1.0, generator=gen())
    torch.testing.assert_close(mirrored, x.flip(-1), atol=1e-5, rtol=0)


def test_fused_flip_equals_crop_then_flip_and_output_size_is_free():
    x = batch(channels=3, size=32)
    boxes = A.sample_crop_boxes(8, (32, 32), generator=gen())
    mask = torch.tensor([True, True, False, True, False, False, True, False])
    fused = A.resized_crop(x, boxes, (16, 24), flip=mask)
    assert fused.shape == (8, 3, 16, 24)
    torch.testing.assert_close(fused, A.flip_where(A.resized_crop(x, boxes, (16, 24)), mask))
    assert A.random_resized_crop(x, 48, generator=gen()).shape == (8, 3, 48, 48)


def test_a_quarter_box_crops_the_quarter():
    x = batch(count=2, channels=1, size=8)
    boxes = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 0.5, 0.5]])
    out = A.resized_crop(x, boxes, 4)
    torch.testing.assert_close(out[0], x[0, :, :4, :4], atol=1e-6, rtol=0)
    torch.testing.assert_close(out[1], x[1, :, 4:, 4:], atol=1e-6, rtol=0)


# Photometric -------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3])
def test_zero_strength_jitter_is_the_identity(channels):
    x = batch(channels=channels)
    assert torch.equal(A.color_jitter(x, 0, 0, 0, 0, p=1.0, generator=gen()), x)
    ones = torch.ones(8)
    assert torch.equal(A.jitter_color(x, ones, ones, ones, torch.zeros(8)), x)


def test_contrast_and_saturation_zero_give_mean_gray_and_gray():
    x = batch()
    flat = A.adjust_contrast(x, torch.zeros(8))
    mean_gray = A.luma(x).mean(dim=(1, 2, 3))
    torch.testing.assert_close(flat, mean_gray.view(-1, 1, 1, 1).expand_as(x))
    torch.testing.assert_close(A.adjust_saturation(x, torch.zeros(8)), A.luma(x).expand_as(x))
    torch.testing.assert_close(A.adjust_brightness(x, torch.full((8,), 0.5)), x * 0.5)


def _hsv_hue(rgb: torch.Tensor) -> torch.Tensor:
    """HSV hue in turns of ``[..., 3]`` colours (reference, for the test only)."""
    value, argmax = rgb.max(-1)
    chroma = value - rgb.min(-1).values
    r, g, b = rgb.unbind(-1)
    sector = torch.stack(((g - b) / chroma, (b - r) / chroma + 2, (r - g) / chroma + 4), -1)
    return (sector.gather(-1, argmax[..., None])[..., 0] / 6) % 1


def test_hue_rotation_matches_hsv_hue_shift():
    x = batch(count=6)
    third = A.rotate_hue(x, torch.full((6,), 1 / 3))  # red -> green -> blue -> red
    torch.testing.assert_close(third, x[:, [2, 0, 1]], atol=1e-6, rtol=0)
    assert torch.equal(A.rotate_hue(x, torch.zeros(6)), x)
    gray = torch.full((6, 3, 4, 4), 0.3)
    torch.testing.assert_close(A.rotate_hue(gray, torch.rand(6, generator=gen())), gray)
    # Colours that stay in gamut: their HSV hue moves by the angle, +-2 x 1.12 degrees.
    colours = 0.5 + 0.2 * (torch.rand(6, 3, 4, 4, generator=gen(2)) - 0.5)
    turns = torch.linspace(-0.1, 0.1, 6)
    rotated = A.rotate_hue(colours, turns)
    before, after = (_hsv_hue(c.movedim(1, -1)) for c in (colours, rotated))
    shift = (after - before - turns.view(-1, 1, 1) + 0.5) % 1 - 0.5
    assert shift.abs().max() < 2.3 / 360


def test_grayscale_has_equal_channels_preserving_luma():
    x = batch()
    out = A.grayscale_where(x, torch.ones(8, dtype=torch.bool))
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 1], out[:, 2])
    torch.testing.assert_close(out[:, :1], 0.299 * x[:, :1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:])
    torch.testing.assert_close(A.luma(out), A.luma(x))
    x1 = batch(channels=1)
    assert torch.equal(A.random_grayscale(x1, p=1.0, generator=gen()), x1)


def test_solarize_threshold_semantics():
    x = batch()
    everything = torch.ones(8, dtype=torch.bool)
    out = A.solarize_where(x, everything, 0.5)
    torch.testing.assert_close(out, torch.where(x >= 0.5, 1 - x, x), atol=0, rtol=0)
    torch.testing.assert_close(out, torch.minimum(x, 1 - x))
    assert torch.equal(A.solarize_where(out, everything, 0.5), out)  # idempotent at 0.5
    inverted = A.solarize(x, threshold=0.0, p=1.0, generator=gen())  # inversion
    torch.testing.assert_close(A.solarize(inverted, 0.0, 1.0, generator=gen()), x, atol=1e-6,
                               rtol=0)
    assert torch.equal(A.solarize_where(x, ~everything, 0.5), x)


def test_blur_kernels_sum_to_one_and_keep_constants_and_unselected_images():
    sigmas = torch.tensor([0.0, 0.1, 1.0, 2.0])
    kernels = A.gaussian_kernels(sigmas, 7)
    torch.testing.assert_close(kernels.sum(1), torch.ones(4))
    torch.testing.assert_close(kernels, kernels.flip(1))
    assert torch.equal(kernels[0], torch.tensor([0.0, 0, 0, 1, 0, 0, 0]))
    constant = torch.full((4, 3, 10, 10), 0.7)
    torch.testing.assert_close(A.blur_with_sigmas(constant, sigmas, 7), constant)
    x = batch(count=4)
    blurred = A.blur_with_sigmas(x, sigmas, 7)
    assert torch.equal(blurred[0], x[0])
    # Image 3 against a plain 2-D convolution with its own kernel and reflect padding.
    kernel_2d = kernels[3][:, None] * kernels[3][None, :]
    reference = F.conv2d(F.pad(x[3:4], (3, 3, 3, 3), mode="reflect").transpose(0, 1),
                         kernel_2d[None, None]).transpose(0, 1)
    torch.testing.assert_close(blurred[3:4], reference)
    assert blurred[3].std() < x[3].std()


# Randomness, shapes, dtypes ------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3])
def test_every_op_keeps_shape_dtype_and_range(channels):
    x = batch(channels=channels)
    for name, out in all_ops(x, gen()).items():
        assert out.dtype == torch.float32, name
        assert out.shape == ((8, channels, 12, 12) if name == "crop" else x.shape), name
        assert out.min() >= 0 and out.max() <= 1, name
    out64 = all_ops(x.double(), gen())
    assert all(v.dtype == torch.float64 for v in out64.values())


def test_ops_do_not_modify_their_input():
    x = batch()
    copy = x.clone()
    all_ops(x, gen())
    assert torch.equal(x, copy)


def test_identical_images_get_different_parameters():
    x = batch(count=1).expand(6, -1, -1, -1).contiguous()
    for name in ("crop", "jitter", "blur"):
        out = all_ops(x, gen())[name].flatten(1)
        assert torch.cdist(out, out).fill_diagonal_(1).min() > 1e-4, name
    flips = A.horizontal_flip(batch(count=2000, size=2), generator=gen())
    assert 0.45 < (flips[:, 0, 0, 0] != batch(count=2000, size=2)[:, 0, 0, 0]).float().mean() < 0.55


def test_same_seed_same_views_different_seed_different():
    images = uint8_batch()
    recipe = A.SimCLRViews(16, [0.5] * 3, [0.25] * 3, blur_p=0.5, solarize_p=0.2)
    first, again, other = recipe(images, gen(7)), recipe(images, gen(7)), recipe(images, gen(8))
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0], other[0])
    assert not torch.equal(first[0], first[1])  # the two views differ
    assert torch.equal(recipe.all_views(images, gen(7)), torch.cat(first))


@pytest.mark.parametrize("channels,size", [(1, 28), (3, 32)])
def test_simclr_views_shapes_dtype_and_range(channels, size):
    mean, std = [0.3] * channels, [0.2] * channels
    recipe = A.SimCLRViews(24, mean, std)
    views = recipe(uint8_batch(channels=channels, size=size), gen())
    assert len(views) == 2
    for view in views:
        assert view.shape == (8, channels, 24, 24) and view.dtype == torch.float32
        assert view.is_contiguous()
        unnormalised = view * 0.2 + 0.3
        assert unnormalised.min() >= -1e-6 and unnormalised.max() <= 1 + 1e-6
    three = A.SimCLRViews(24, mean, std, num_views=3)
    assert len(three(uint8_batch(channels=channels), gen())) == 3


def test_simclr_views_config_round_trip_and_errors():
    recipe = A.SimCLRViews(32, [0.5, 0.5, 0.5], [0.2, 0.2, 0.2], crop_scale=(0.2, 1.0))
    assert A.SimCLRViews(**dataclasses.asdict(recipe)) == recipe
    with pytest.raises(UserError):
        A.SimCLRViews(32, [0.5, 0.5, 0.5], [0.2])
    with pytest.raises(UserError):
        A.SimCLRViews(32, [0.5], [0.2], jitter_p=1.5)
    with pytest.raises(UserError):
        A.SimCLRViews(32, [0.5], [0.2])(uint8_batch(channels=3), gen())


def test_eval_transform_and_conversions():
    images = uint8_batch(channels=1, size=28)
    as_float = A.to_float(images)
    assert as_float.dtype == torch.float32 and torch.equal(as_float * 255, images.float())
    same = A.EvalTransform(28, [0.5], [0.25])(images)
    torch.testing.assert_close(same, (images.float() / 255 - 0.5) / 0.25)
    assert A.EvalTransform(32, [0.5], [0.25])(images).shape == (8, 1, 32, 32)
    torch.testing.assert_close(A.normalize(as_float, [0.5], [0.25]), (as_float - 0.5) / 0.25)


# Structure: no Python loop over the images -------------------------------------------------


class _CountOps(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        self.count += 1
        return func(*args, **(kwargs or {}))


def _ops_dispatched(fn) -> int:  # noqa: ANN001
    with _CountOps() as counter:
        fn()
    return counter.count


@pytest.mark.parametrize("channels", [1, 3])
def test_no_op_loops_over_the_batch(channels):
    """The number of tensor ops an op dispatches does not grow with the batch size."""
    recipe = A.SimCLRViews(16, [0.5] * channels, [0.25] * channels, blur_p=0.5, solarize_p=0.5)
    small, large = batch(count=2, channels=channels), batch(count=32, channels=channels)
    for name, op in OPS.items():
        assert _ops_dispatched(lambda op=op: op(small, gen())) == _ops_dispatched(
            lambda op=op: op(large, gen())), name
    assert _ops_dispatched(lambda: recipe(uint8_batch(count=2, channels=channels), gen())) == (
        _ops_dispatched(lambda: recipe(uint8_batch(count=32, channels=channels), gen())))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_images_with_cpu_or_cuda_generator():
    images = uint8_batch().cuda()
    recipe = A.SimCLRViews(16, [0.5] * 3, [0.25] * 3, blur_p=0.5)
    for generator in (gen(), torch.Generator(device="cuda").manual_seed(0)):
        views = recipe(images, generator)
        assert all(v.is_cuda for v in views)
    assert math.isfinite(float(views[0].sum()))


def test_default_view_size_is_three_quarters_rounded_down_to_a_multiple_of_four():
    from fewlabels.augment import default_view_size

    assert [default_view_size(s) for s in (28, 32, 64, 96, 224)] == [20, 24, 48, 72, 168]
    assert default_view_size(6) == 6  # tiny images keep their size
    assert all(default_view_size(s) % 4 == 0 and default_view_size(s) <= s
               for s in range(8, 300))


# Per-image probabilities and multi-crop views ------------------------------------------------


def test_blur_and_solarize_take_per_image_probabilities():
    x = batch()
    for op in (lambda x, p, g: A.gaussian_blur(x, (0.5, 1.0), 5, p, generator=g),
               lambda x, p, g: A.solarize(x, 0.5, p, generator=g)):
        # A tensor filled with p draws and gives exactly what the float p gives.
        assert torch.equal(op(x, torch.full((8,), 0.5), gen(4)), op(x, 0.5, gen(4)))
        chosen = torch.tensor([1.0, 0.0] * 4)
        out = op(x, chosen, gen())
        assert torch.equal(out[1::2], x[1::2])  # probability 0: untouched, exactly
        assert all(not torch.equal(out[i], x[i]) for i in range(0, 8, 2))
    with pytest.raises(ValueError):
        A.solarize(x, 0.5, torch.ones(3), generator=gen())
    with pytest.raises(ValueError):
        A.gaussian_blur(x, (0.5, 1.0), 5, torch.full((8,), 1.5), generator=gen())


def _multicrop(channels: int = 1, **options) -> A.MultiCropViews:
    return A.MultiCropViews([0.3] * channels, [0.2] * channels, global_size=20, **options)


@pytest.mark.parametrize("channels", [1, 3])
def test_multicrop_shapes_dtype_range_and_view_order(channels):
    images = uint8_batch(count=5, channels=channels, size=28)
    recipe = _multicrop(channels, local_size=12, local_views=6)
    global_views, local_views = recipe(images, gen())
    assert global_views.shape == (10, channels, 20, 20) and global_views.dtype == torch.float32
    assert local_views.shape == (30, channels, 12, 12)
    for views in (global_views, local_views):
        unnormalised = views * 0.2 + 0.3
        assert unnormalised.min() >= -1e-6 and unnormalised.max() <= 1 + 1e-6
    assert recipe.num_global_views == 2 and recipe.num_views == 8
    assert _multicrop(channels)(images, gen())[1] is None
    # View-major: with crops of the whole image, no flip and no photometric change, every view
    # of image i (row v*N + i) is image i resized (by the crop's bilinear sampling).
    plain = _multicrop(channels, local_size=12, local_views=2, global_scale=(1.0, 1.0),
                       local_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0,
                       grayscale_p=0.0, global_blur=(0.0, 0.0), local_blur=0.0)
    global_views, local_views = plain(images, gen())
    whole = A.resized_crop(A.to_float(images), torch.tensor([[0.0, 0.0, 1.0, 1.0]] * 5), 20)
    expected = A.normalize(whole, [0.3] * channels, [0.2] * channels)
    torch.testing.assert_close(global_views, expected.repeat(2, 1, 1, 1), atol=2e-5, rtol=0)
    assert torch.equal(local_views[:5], local_views[5:])


def test_multicrop_respects_per_view_blur_and_solarize_probabilities():
    images = uint8_batch(count=16, channels=3, size=28)
    quiet = dict(jitter_p=0.0, grayscale_p=0.0, blur_sigma=(0.05, 0.05))  # sigma 1 px at 20 px
    none = _multicrop(3, global_blur=(0.0, 0.0), global_solarize=(0.0, 0.0), **quiet)
    reference, _ = none(images, gen(5))
    for option in ({"global_blur": (1.0, 0.0)}, {"global_solarize": (1.0, 0.0)}):
        settings = {"global_blur": (0.0, 0.0), "global_solarize": (0.0, 0.0), **option}
        views, _ = _multicrop(3, **settings, **quiet)(images, gen(5))
        # Same seed, same crops: view 1 (p = 0) is never changed, view 0 (p = 1) always is.
        assert torch.equal(views[16:], reference[16:]), option
        assert all(not torch.equal(views[i], reference[i]) for i in range(16)), option
    # The defaults (1.0, 0.1): over many images about 10 % of the second view is blurred.
    many = uint8_batch(count=400, channels=1, size=28)
    blurred, _ = _multicrop(1, global_solarize=(0.0, 0.0), **quiet)(many, gen(6))
    unblurred, _ = _multicrop(1, global_blur=(0.0, 0.0), global_solarize=(0.0, 0.0),
                              **quiet)(many, gen(6))
    changed = (blurred != unblurred).flatten(1).any(dim=1).view(2, 400).float().mean(dim=1)
    assert changed[0] == 1.0 and 0.05 < changed[1] < 0.15


def test_multicrop_is_deterministic_for_a_seed_and_validates_its_options():
    images = uint8_batch(count=4, channels=3, size=28)
    recipe = _multicrop(3, local_size=12, local_views=3)
    first, again, other = recipe(images, gen(7)), recipe(images, gen(7)), recipe(images, gen(8))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0]) and not torch.equal(first[1], other[1])
    assert A.MultiCropViews(**dataclasses.asdict(recipe)) == recipe
    for bad in ({"global_blur": (1.0, 0.1, 0.5)}, {"local_views": 2}, {"blur_sigma": (0.1, 0.9)},
                {"global_solarize": (0.0, 1.5)}, {"local_blur": -0.1}, {"global_scale": (0, 1)},
                {"hue": 0.7}):
        with pytest.raises(UserError):
            _multicrop(3, **bad)
    with pytest.raises(UserError):
        recipe(uint8_batch(channels=1), gen())


def test_multicrop_blur_sigma_scales_with_the_view_side():
    recipe = _multicrop(local_size=12, local_views=2)
    assert recipe.blur_sigma == (0.005, 0.05)
    # sigma_max 1 px at 20 px -> kernel 2*3+1 = 7; 0.6 px at 12 px -> 2*2+1 = 5.
    assert recipe.blur_kernel_size(20) == 7 and recipe.blur_kernel_size(12) == 5


@pytest.mark.parametrize("channels", [1, 3])
def test_multicrop_does_not_loop_over_the_batch(channels):
    recipe = _multicrop(channels, local_size=12, local_views=4)
    assert _ops_dispatched(lambda: recipe(uint8_batch(count=2, channels=channels), gen())) == (
        _ops_dispatched(lambda: recipe(uint8_batch(count=32, channels=channels), gen())))
