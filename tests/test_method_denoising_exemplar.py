"""Denoising autoencoder: masking noise zeroes exactly the requested fraction of every image,
seeded; Gaussian noise has the requested spread; both reconstruction losses against
hand-computed values; the method's targets are the clean images.

Exemplar: seed patches fall where the image has gradients (all of them on images textured in
one corner and flat elsewhere); seeding is reproducible and stored in buffers (a fresh method
loading them makes the same views); with the identity transformation a view is exactly its
seed's patch, and every view's label is the seed it was cut from."""

import math

import pytest
import torch
import torch.nn.functional as F

from fewlabels.errors import UserError
from fewlabels.losses.reconstruction import denoising_reconstruction_loss
from fewlabels.methods import Batch, DataInfo, StepInfo
from fewlabels.methods.denoising_autoencoder import (
    DenoisingAutoencoder,
    DenoisingAutoencoderConfig,
    corrupt,
    masking_noise_mask,
)
from fewlabels.methods.exemplar import (
    Exemplar,
    ExemplarConfig,
    seed_positions,
    sobel_magnitude,
    transform_patches,
)
from fewlabels.models import build_backbone

DATA = DataInfo(channels=1, image_size=16, mean=(0.3,), std=(0.35,), num_images=40)


def _images(count=8, size=16, seed=0):
    generator = torch.Generator().manual_seed(seed)
    small = torch.rand(count, 1, 4, 4, generator=generator)
    return (F.interpolate(small, size=size, mode="bilinear") * 255).to(torch.uint8)


def _backbone():
    torch.manual_seed(0)
    return build_backbone("convnet", in_channels=1, image_size=16, width=4, depth=2,
                          feature_dim=8)


# -- denoising autoencoder -----------------------------------------------------------------------


def test_masking_noise_zeroes_exactly_the_fraction_of_every_image_and_is_seeded():
    images = torch.rand(64, 3, 10, 10, generator=torch.Generator().manual_seed(0)) + 0.1
    corrupted, mask = corrupt(images, "masking", 0.3, 0.0, torch.Generator().manual_seed(1))
    again, _ = corrupt(images, "masking", 0.3, 0.0, torch.Generator().manual_seed(1))
    other, _ = corrupt(images, "masking", 0.3, 0.0, torch.Generator().manual_seed(2))
    zeroed = (corrupted == 0).all(dim=1)  # [N, H, W]: every channel of a pixel together
    assert zeroed.flatten(1).sum(1).tolist() == [30] * 64
    assert torch.equal(zeroed, mask.squeeze(1))
    torch.testing.assert_close(corrupted[~mask.expand_as(images)], images[~mask.expand_as(images)])
    assert torch.equal(corrupted, again) and not torch.equal(corrupted, other)
    # each pixel is equally likely to be chosen: over many images every pixel near 30 %
    many = masking_noise_mask(4000, 10, 0.3, torch.Generator().manual_seed(3))
    assert many.float().mean(0).sub(0.3).abs().max() < 0.04


def test_gaussian_noise_has_the_requested_spread_and_both_masks_first():
    images = torch.full((200, 1, 16, 16), 0.5)
    noisy, mask = corrupt(images, "gaussian", 0.25, 0.2, torch.Generator().manual_seed(0))
    assert not mask.any()  # nothing masked, every pixel noisy
    assert (noisy - images).mean().abs() < 0.005
    assert (noisy - images).std().item() == pytest.approx(0.2, rel=0.02)
    both, mask = corrupt(images, "both", 0.25, 0.2, torch.Generator().manual_seed(0))
    assert mask.flatten(1).sum(1).eq(64).all()
    # masked pixels are 0 plus noise: mean 0, the others 0.5 plus noise
    assert both[mask].mean().abs() < 0.01 and (both[~mask].mean() - 0.5).abs() < 0.01


def test_denoising_losses_by_hand():
    logits = torch.tensor([0.0, math.log(3.0)]).view(1, 1, 1, 2)
    pixels = torch.tensor([1.0, 0.5]).view(1, 1, 1, 2)
    # sigmoid: 1/2 and 3/4; -[log 1/2] and -[0.5 log 3/4 + 0.5 log 1/4]
    expected = (math.log(2) - 0.5 * math.log(0.75) - 0.5 * math.log(0.25)) / 2
    assert denoising_reconstruction_loss(logits, pixels).item() == pytest.approx(expected)
    prediction = torch.tensor([1.0, -2.0, 0.0, 0.5]).view(1, 1, 2, 2)
    target = torch.zeros(1, 1, 2, 2)
    assert denoising_reconstruction_loss(prediction, target, "mse").item() == pytest.approx(
        (1 + 4 + 0 + 0.25) / 4)


def test_denoising_views_are_the_corrupted_input_and_the_clean_target():
    method = DenoisingAutoencoder(_backbone(), DenoisingAutoencoderConfig(
        flip=False, decoder_width=4), DATA).train()
    images = _images()
    with torch.no_grad():
        noisy, target = method.make_views(Batch(unlabeled=images),
                                          torch.Generator().manual_seed(0))
    clean = images.float() / 255
    torch.testing.assert_close(target, clean)  # cross-entropy: [0, 1] pixels
    zeroed = torch.isclose(noisy, torch.tensor((0 - 0.3) / 0.35))
    assert zeroed.flatten(1).sum(1).ge(64).all()  # 25 % of 256 pixels (and any black ones)
    out = method((noisy, target), StepInfo(0, 0, 0.0, torch.Generator(), 1))
    assert torch.isfinite(out["loss"])
    mse = DenoisingAutoencoder(_backbone(), DenoisingAutoencoderConfig(
        flip=False, decoder_width=4, loss="mse"), DATA)
    with torch.no_grad():
        _, normalised = mse.make_views(Batch(unlabeled=images), torch.Generator().manual_seed(0))
    torch.testing.assert_close(normalised, (clean - 0.3) / 0.35)


def test_denoising_reconstruct_returns_the_noisy_input():
    method = DenoisingAutoencoder(_backbone(), DenoisingAutoencoderConfig(decoder_width=4),
                                  DATA).eval()
    images = (_images(4).float() / 255 - 0.3) / 0.35
    out = method.reconstruct(images, torch.Generator().manual_seed(0))
    zero = (0 - 0.3) / 0.35
    torch.testing.assert_close(out["masked"][out["mask"]],
                               torch.full_like(out["masked"][out["mask"]], zero))
    assert out["reconstruction"].shape == images.shape and out["mask"].shape == (4, 1, 16, 16)


def test_denoising_bad_options():
    with pytest.raises(UserError, match="--masking-fraction"):
        DenoisingAutoencoder(_backbone(), DenoisingAutoencoderConfig(masking_fraction=1.0),
                             DATA)


# -- exemplar ------------------------------------------------------------------------------------


def _textured(count=200, size=32, seed=0):
    """Flat gray images with random texture in the top-left 12x12 corner only."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.full((count, 1, size, size), 0.5)
    images[:, :, :12, :12] = torch.rand(count, 1, 12, 12, generator=generator)
    return images


def test_sobel_sees_no_edge_on_flat_images_or_at_their_border():
    assert sobel_magnitude(torch.full((2, 1, 8, 8), 0.7)).abs().max() == 0
    ramp = torch.arange(8.0).view(1, 1, 1, 8).expand(1, 1, 8, 8)
    magnitude = sobel_magnitude(ramp)
    assert torch.allclose(magnitude[..., 1:-1], torch.full((1, 1, 8, 6), 8.0))


def test_seed_patches_lie_where_the_gradients_are():
    images = _textured()
    corners = seed_positions(images, 8, torch.Generator().manual_seed(0))  # [N, 2]
    # a patch touches the texture (or its edge, one pixel out) only if it starts above 13
    assert (corners < 13).all()
    # uniform positions would touch it only (13 / 25)^2 = 27 % of the time; and the energy
    # prefers patches well inside the texture
    assert corners.float().mean() < 7
    again = seed_positions(images, 8, torch.Generator().manual_seed(0))
    assert torch.equal(corners, again)


def _exemplar(**options):
    config = ExemplarConfig(**{"seeds": 30, "view_size": 8, **options})
    return Exemplar(_backbone(), config, DATA).train()


def test_seeding_is_reproducible_and_resumable_from_the_buffers():
    images = _images(40)
    first, second = _exemplar(), _exemplar()
    first.take_seeds(images, torch.Generator().manual_seed(5))
    second.take_seeds(images, torch.Generator().manual_seed(5))
    for name in ("seed_windows", "seed_centres", "seed_sources"):
        assert torch.equal(getattr(first, name), getattr(second, name)), name
    assert first.seed_sources[:, 0].unique().numel() == 30  # one seed per image
    other = _exemplar()
    other.take_seeds(images, torch.Generator().manual_seed(6))
    assert not torch.equal(first.seed_sources, other.seed_sources)
    # a fresh method given the state (a resumed run) skips the sampling and makes the same views
    resumed = _exemplar()
    resumed.load_state_dict(first.state_dict())
    assert resumed.on_epoch_start(None) is None  # seeds already taken: no work
    batch = Batch(unlabeled=images[:6])
    views, labels = first.make_views(batch, torch.Generator().manual_seed(1))
    views2, labels2 = resumed.make_views(batch, torch.Generator().manual_seed(1))
    assert torch.equal(labels, labels2) and torch.equal(views, views2)


def test_more_seeds_than_images_cycles_through_the_images():
    method = _exemplar(seeds=50)
    method.take_seeds(_images(20), torch.Generator().manual_seed(0))
    assert torch.bincount(method.seed_sources[:, 0], minlength=20).tolist().count(2) == 10


def test_identity_views_are_the_seed_patches_and_labels_match_seeds():
    method = _exemplar(translation=0.0, scale=(1.0, 1.0), rotation_degrees=0.0,
                       jitter_strength=0.0)
    images = _images(40)
    method.take_seeds(images, torch.Generator().manual_seed(3))
    views, labels = method.make_views(Batch(unlabeled=images[:16]),
                                      torch.Generator().manual_seed(0))
    assert views.shape == (16, 1, 8, 8) and labels.shape == (16,)
    for view, label in zip(views, labels, strict=True):
        source, top, left = method.seed_sources[label].tolist()
        patch = images[source, :, top:top + 8, left:left + 8].float() / 255
        torch.testing.assert_close(view, (patch - 0.3) / 0.35, atol=1e-5, rtol=0)
    out = method((views, labels), StepInfo(0, 0, 0.0, torch.Generator(), 1))
    assert torch.isfinite(out["loss"]) and out["loss"].item() == pytest.approx(
        math.log(30), rel=0.3)


def test_transformations_rotate_and_zoom_about_the_patch_centre():
    window = torch.zeros(1, 1, 9, 9)
    window[0, 0, 4, 6] = 1.0  # two pixels right of the centre pixel (4, 4)
    centre = torch.tensor([[4.5, 4.5]])
    quarter = transform_patches(window, centre, 9, torch.ones(1), torch.tensor([math.pi / 2]),
                                torch.zeros(1, 2))
    # the view at pixel (r, c) shows the window at centre + R (c, r): a quarter turn moves the
    # dot from two right of the centre to two above it
    assert quarter[0, 0].argmax().item() == 2 * 9 + 4
    zoomed = transform_patches(window, centre, 9, torch.full((1,), 2.0), torch.zeros(1),
                               torch.zeros(1, 2))
    assert zoomed[0, 0].argmax().item() == 4 * 9 + 8  # twice as far from the centre


def test_views_before_seeding_fail_and_bad_options_say_which_flag():
    with pytest.raises(RuntimeError, match="seed patches"):
        _exemplar().make_views(Batch(unlabeled=_images(2)), torch.Generator())
    with pytest.raises(UserError, match="--scale"):
        _exemplar(scale=(1.4, 0.7))
