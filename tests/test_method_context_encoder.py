"""Context encoder: the three kinds of region (the central square, random blocks, random
blobs of an exact area, seeded), the loss weights around the hole, the inpainting loss and
both adversarial terms against hand-computed values; the encoder sees the hole at the mean;
each adversarial term's gradient reaches only its own player; ``reconstruct`` for
``fewlabels reconstruct``."""

import math

import pytest
import torch
import torch.nn.functional as F

from fewlabels.errors import UserError
from fewlabels.losses.reconstruction import (
    discriminator_loss,
    generator_adversarial_loss,
    masked_reconstruction_loss,
    overlap_weights,
)
from fewlabels.methods import Batch, DataInfo, StepInfo
from fewlabels.methods.context_encoder import (
    ContextEncoder,
    ContextEncoderConfig,
    center_mask,
    random_block_mask,
    random_region_mask,
)
from fewlabels.models import build_backbone

DATA = DataInfo(channels=1, image_size=16, mean=(0.3,), std=(0.35,), num_images=32)


def _images(count=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    small = torch.rand(count, 1, 4, 4, generator=generator)
    return (F.interpolate(small, size=16, mode="bilinear") * 255).to(torch.uint8)


def _method(**options):
    torch.manual_seed(0)
    backbone = build_backbone("convnet", in_channels=1, image_size=16, width=4, depth=2,
                              feature_dim=8)
    config = ContextEncoderConfig(**{"decoder_width": 4, "discriminator_width": 4, **options})
    return ContextEncoder(backbone, config, DATA).train()


def _views(method, seed=0):
    with torch.no_grad():
        return method.make_views(Batch(unlabeled=_images()), torch.Generator().manual_seed(seed))


# -- regions -------------------------------------------------------------------------------------


def test_center_mask_is_the_middle_square():
    mask = center_mask(2, 8, 4)
    expected = torch.zeros(8, 8, dtype=torch.bool)
    expected[2:6, 2:6] = True
    assert mask.shape == (2, 1, 8, 8)
    assert torch.equal(mask[0, 0], expected) and torch.equal(mask[1, 0], expected)


def test_random_region_masks_exactly_the_fraction_of_every_image_and_is_seeded():
    first = random_region_mask(50, 28, 0.25, 6, torch.Generator().manual_seed(3))
    again = random_region_mask(50, 28, 0.25, 6, torch.Generator().manual_seed(3))
    other = random_region_mask(50, 28, 0.25, 6, torch.Generator().manual_seed(4))
    assert first.shape == (50, 1, 28, 28) and first.dtype == torch.bool
    assert first.flatten(1).sum(1).tolist() == [round(0.25 * 28 * 28)] * 50
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert not torch.equal(first[0], first[1])  # each image its own region
    # blobs, not scattered pixels: most masked pixels have a masked 4-neighbour
    padded = F.pad(first.float(), (1, 1, 1, 1))
    neighbours = (padded[..., :-2, 1:-1] + padded[..., 2:, 1:-1] + padded[..., 1:-1, :-2]
                  + padded[..., 1:-1, 2:])
    assert (neighbours[first] >= 2).float().mean() > 0.9


def test_random_blocks_are_squares_of_the_given_side_inside_the_image():
    mask = random_block_mask(200, 16, 4, 3, torch.Generator().manual_seed(0))
    counts = mask.flatten(1).sum(1)
    assert counts.min() >= 16 and counts.max() <= 3 * 16  # overlapping squares: 16..48
    assert (counts == 48).any() and (counts < 48).any()
    single = random_block_mask(2000, 16, 4, 1, torch.Generator().manual_seed(1))
    rows, cols = single.any(dim=3).squeeze(1), single.any(dim=2).squeeze(1)
    assert (rows.sum(1) == 4).all() and (cols.sum(1) == 4).all()
    assert single.flatten(1).sum(1).eq(16).all()
    # every position is reachable, the corners included
    assert single[:, 0, 0, 0].any() and single[:, 0, -1, -1].any()


# -- losses by hand ------------------------------------------------------------------------------


def test_overlap_weights_put_the_band_around_the_hole():
    mask = torch.zeros(1, 1, 5, 5, dtype=torch.bool)
    mask[0, 0, 2, 2] = True
    weights = overlap_weights(mask, overlap=1, overlap_weight=0.5)
    expected = torch.zeros(5, 5)
    expected[1:4, 1:4] = 0.5
    expected[2, 2] = 1.0
    torch.testing.assert_close(weights[0, 0], expected)
    torch.testing.assert_close(overlap_weights(mask, 0, 0.5), mask.float())


def test_masked_reconstruction_loss_by_hand():
    target = torch.zeros(2, 2, 2, 2)
    prediction = torch.zeros(2, 2, 2, 2)
    prediction[0, :, 0, 0] = torch.tensor([1.0, 3.0])  # in image 0's hole
    prediction[0, :, 1, 1] = 10.0  # outside it: ignored
    prediction[1, 0, 0, 1] = 2.0  # in image 1's band, weight 0.5
    weights = torch.zeros(2, 1, 2, 2)
    weights[0, 0, 0, 0] = 1.0
    weights[1, 0, 0, 0] = 1.0
    weights[1, 0, 0, 1] = 0.5
    # image 0: (1 + 9) / (2 channels * 1) = 5; image 1: 0.5 * 4 / (2 * 1.5) = 2/3
    expected = (5.0 + 2.0 / 3.0) / 2
    assert masked_reconstruction_loss(prediction, target, weights).item() == pytest.approx(
        expected)


def test_adversarial_losses_by_hand():
    real, fake = torch.tensor([0.0, math.log(3.0)]), torch.tensor([0.0, -math.log(3.0)])
    # D = sigmoid: real 1/2 and 3/4; fake 1/2 and 1/4
    expected = -(math.log(0.5) + math.log(0.75)) / 2 - (math.log(0.5) + math.log(0.75)) / 2
    assert discriminator_loss(real, fake).item() == pytest.approx(expected)
    assert generator_adversarial_loss(fake).item() == pytest.approx(
        -(math.log(0.5) + math.log(0.25)) / 2)


# -- the method ----------------------------------------------------------------------------------


def test_the_encoder_sees_the_hole_at_the_mean_and_the_context_as_is():
    method = _method(mask="center", flip=False)
    images, masked, mask = _views(method)
    expected = (_images().float() / 255 - 0.3) / 0.35
    torch.testing.assert_close(images, expected)
    assert mask.shape == (8, 1, 16, 16) and mask[:, :, 4:12, 4:12].all()
    assert (masked[mask.expand_as(masked)] == 0).all()
    torch.testing.assert_close(masked[~mask.expand_as(masked)], images[~mask.expand_as(images)])


def test_reconstruction_only_has_no_discriminator_and_a_finite_loss():
    method = _method()
    assert method.discriminator is None
    out = method(_views(method), StepInfo(0, 0, 0.0, torch.Generator(), 1))
    assert torch.isfinite(out["loss"]) and out["loss"] == out["reconstruction_loss"]
    out["loss"].backward()
    assert all(p.grad is not None for p in method.decoder.parameters())


def _grads(loss, parameters):
    grads = torch.autograd.grad(loss, parameters, retain_graph=True, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(parameters, grads, strict=True)]


def test_each_adversarial_term_trains_only_its_own_player():
    method = _method(adversarial_weight=0.25)
    images, masked, mask = _views(method)
    prediction = method.decoder(method.backbone(masked))
    adversarial, critic, _ = method.adversarial_terms(images, prediction, mask)
    generator_side = list(method.backbone.parameters()) + list(method.decoder.parameters())
    critic_side = list(method.discriminator.parameters())
    # the discriminator's loss moves the discriminator and nothing else
    assert all(g.abs().sum() == 0 for g in _grads(critic, generator_side))
    assert sum(g.abs().sum() for g in _grads(critic, critic_side)) > 0
    # the encoder-decoder's adversarial loss moves the encoder-decoder and not the critic
    assert all(g.abs().sum() == 0 for g in _grads(adversarial, critic_side))
    assert sum(g.abs().sum() for g in _grads(adversarial, list(method.decoder.parameters()))) > 0
    # the whole loss: the discriminator's gradient is exactly its own loss's
    out = method((images, masked, mask), StepInfo(0, 0, 0.0, torch.Generator(), 1))
    for total, own in zip(_grads(out["loss"], critic_side), _grads(critic, critic_side),
                          strict=True):
        torch.testing.assert_close(total, own)
    assert {"adversarial_loss", "discriminator_loss", "discriminator_accuracy"} <= set(out)


def test_reconstruct_gives_the_masked_input_the_prediction_and_the_mask():
    method = _method().eval()
    images = (_images(4).float() / 255 - 0.3) / 0.35
    out = method.reconstruct(images, torch.Generator().manual_seed(0))
    assert out["masked"].shape == out["reconstruction"].shape == images.shape
    assert out["mask"].shape == (4, 1, 16, 16) and out["mask"].dtype == torch.bool
    assert (out["masked"][out["mask"].expand_as(images)] == 0).all()


@pytest.mark.parametrize(("options", "flag"), [({"mask_fraction": 1.0}, "--mask-fraction"),
                                               ({"adversarial_weight": 1.0},
                                                "--adversarial-weight"),
                                               ({"overlap": -1}, "--overlap")])
def test_bad_options_say_which_flag(options, flag):
    with pytest.raises(UserError, match=flag):
        _method(**options)


@pytest.mark.slow
def test_two_processes_equal_one_with_the_adversarial_term(tmp_path):
    """The per-image losses and the discriminator run with detached parameters give a
    two-process run (gloo) the gradients of one process on the same global batch."""
    from engine_harness import compare_one_and_two_processes

    options = {"adversarial_weight": 0.1, "decoder_width": 4, "discriminator_width": 4,
               "mask": "random-block"}
    compare_one_and_two_processes(tmp_path, "context-encoder", options,
                                  {"name": "convnet", "width": 4, "depth": 2, "feature_dim": 8},
                                  steps=3, batch_size=8)
