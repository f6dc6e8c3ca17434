"""sRGB <-> CIE Lab: values against the reference formula written out in plain Python and
against published values, round trips, the L-only shortcut, the 8-bit table, and the ab
bins of the sRGB gamut."""


import pytest
import torch

from fewlabels.augment.lab import (
    gamut_ab_bins,
    lab_to_rgb,
    linear_rgb_to_lab,
    rgb_to_lab,
    rgb_to_lightness,
    srgb_to_linear,
    uint8_to_linear,
)


def reference_lab(red, green, blue):
    """CIE 1976 L*a*b* of one sRGB colour in [0, 1], D65, one scalar step at a time."""
    def linear(c):
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = linear(red), linear(green), linear(blue)
    x = 0.4124564 * r + 0.3575761 * g + 0.1804375 * b
    y = 0.2126729 * r + 0.7151522 * g + 0.0721750 * b
    z = 0.0193339 * r + 0.1191920 * g + 0.9503041 * b

    def f(t):
        return t ** (1 / 3) if t > (6 / 29) ** 3 else t / (3 * (6 / 29) ** 2) + 4 / 29

    fx, fy, fz = f(x / 0.95047), f(y / 1.0000001), f(z / 1.08883)  # the rows' sums
    return 116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)


def lab_of(*rgb):
    return rgb_to_lab(torch.tensor(rgb, dtype=torch.float64).view(3, 1, 1)).flatten().tolist()


@pytest.mark.parametrize(("rgb", "published"), [
    ((1.0, 1.0, 1.0), (100.0, 0.0, 0.0)),
    ((0.0, 0.0, 0.0), (0.0, 0.0, 0.0)),
    ((1.0, 0.0, 0.0), (53.24, 80.09, 67.20)),
    ((0.0, 1.0, 0.0), (87.73, -86.18, 83.18)),
    ((0.0, 0.0, 1.0), (32.30, 79.19, -107.86)),
])
def test_primaries_and_white_match_published_values(rgb, published):
    assert lab_of(*rgb) == pytest.approx(published, abs=0.01)


@pytest.mark.parametrize("rgb", [(0.5, 0.5, 0.5), (0.02, 0.03, 0.01), (0.9, 0.4, 0.1),
                                 (0.2, 0.7, 0.95), (0.04045, 0.5, 0.0031)])
def test_values_match_the_reference_formula(rgb):
    # includes colours on the linear segments of both the companding and f
    assert lab_of(*rgb) == pytest.approx(reference_lab(*rgb), abs=1e-9)


def test_grey_has_no_chroma_and_mid_grey_has_its_lightness():
    lightness, a, b = lab_of(0.5, 0.5, 0.5)
    assert a == pytest.approx(0, abs=1e-9) and b == pytest.approx(0, abs=1e-9)
    assert lightness == pytest.approx(53.389, abs=1e-3)  # 116 * 0.21404^(1/3) - 16


def test_round_trip_within_tolerance_on_a_batch():
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(8, 3, 5, 7, generator=generator)
    torch.testing.assert_close(lab_to_rgb(rgb_to_lab(images)), images, atol=2e-5, rtol=0)
    double = images.double()
    torch.testing.assert_close(lab_to_rgb(rgb_to_lab(double)), double, atol=1e-12, rtol=0)
    lab = rgb_to_lab(double)
    torch.testing.assert_close(rgb_to_lab(lab_to_rgb(lab)), lab, atol=1e-9, rtol=0)


def test_out_of_gamut_lab_is_clamped_unless_asked_not_to():
    lab = torch.tensor([50.0, 120.0, -120.0]).view(3, 1, 1)  # beyond sRGB
    clamped = lab_to_rgb(lab)
    assert clamped.min() >= 0 and clamped.max() <= 1
    raw = lab_to_rgb(lab, clamp=False)
    assert raw.min() < 0 or raw.max() > 1


def test_lightness_alone_and_the_8_bit_table_agree_with_the_full_conversion():
    images = torch.randint(0, 256, (4, 3, 6, 6), dtype=torch.uint8)
    floats = images.double() / 255
    torch.testing.assert_close(rgb_to_lightness(floats), rgb_to_lab(floats)[:, :1])
    torch.testing.assert_close(uint8_to_linear(images, torch.float64), srgb_to_linear(floats))
    torch.testing.assert_close(linear_rgb_to_lab(uint8_to_linear(images, torch.float64)),
                               rgb_to_lab(floats))


def test_gradients_are_finite_at_black_and_at_the_thresholds():
    images = torch.tensor([0.0, 0.04045, 1.0, 0.0031308, 0.5, 0.0]).view(2, 3, 1, 1)
    images.requires_grad_(True)
    rgb_to_lab(images).sum().backward()
    assert torch.isfinite(images.grad).all()


def test_gamut_bins_hold_every_8_bit_colour():
    bins = gamut_ab_bins(10.0)
    assert bins.shape == (261, 2)
    assert torch.equal(bins, torch.round(bins / 10) * 10)  # centred on multiples of 10
    keys = (bins[:, 0] * 1000 + bins[:, 1]).tolist()
    assert keys == sorted(keys)
    generator = torch.Generator().manual_seed(1)
    colours = torch.randint(0, 256, (1, 3, 200, 500), generator=generator, dtype=torch.uint8)
    ab = rgb_to_lab(colours.float() / 255)[0, 1:].reshape(2, -1)
    cells = {tuple(cell) for cell in (torch.round(ab / 10) * 10).T.tolist()}
    assert cells <= {tuple(centre) for centre in bins.tolist()}
    for primary in [(1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0), (1.0, 1.0, 0.0)]:
        a, b = lab_of(*primary)[1:]
        assert [round(a / 10) * 10, round(b / 10) * 10] in bins.tolist()
