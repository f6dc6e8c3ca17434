"""Colorization: the soft encoding, the smoothed prior, the rebalancing weights and the loss
against hand-computed values; the bin counts against brute force; the prior counted once
before the first epoch into buffers; the backbone sees the lightness alone, in training and
in evaluation; grey data refused; a run trains, evaluates and exports end to end (the export,
loaded strictly, gives evaluate's features); 2 processes equal one."""

import math

import numpy as np
import pytest
import torch
from safetensors import safe_open

from fewlabels.augment.lab import gamut_ab_bins, lab_to_rgb, rgb_to_lab, rgb_to_lightness
from fewlabels.cli import main
from fewlabels.engine.checkpoint import load_checkpoint
from fewlabels.engine.epoch_work import EpochContext
from fewlabels.errors import UserError
from fewlabels.evaluate import extract_features
from fewlabels.losses.colorization import (
    colorization_loss,
    rebalancing_weights,
    smooth_distribution,
    soft_encode,
)
from fewlabels.methods import Batch, DataInfo
from fewlabels.methods.colorization import Colorization, ColorizationConfig, lightness_input
from fewlabels.models import build_backbone, load_backbone
from fewlabels.models.lightness import LightnessBackbone
from fewlabels.runs import load_pretrained

MEAN, STD = (0.45, 0.4, 0.35), (0.25, 0.24, 0.26)
DATA = DataInfo(channels=3, image_size=28, mean=MEAN, std=STD, num_classes=4, num_images=40)
TINY = ["--width", "4", "--depth", "2", "--feature-dim", "8", "--decoder-width", "4"]


def _method(**options):
    torch.manual_seed(0)
    backbone = build_backbone("convnet", in_channels=3, image_size=28, width=4, depth=2,
                              feature_dim=8)
    config = ColorizationConfig(**{"decoder_width": 4, **options})
    return Colorization(backbone, config, DATA).train()


def _colour_images(count=40, seed=0):
    generator = torch.Generator().manual_seed(seed)
    small = torch.rand(count, 3, 4, 4, generator=generator)
    return (torch.nn.functional.interpolate(small, size=28, mode="bilinear") * 255).to(
        torch.uint8)


def _context(images, seed=0):
    return EpochContext(epoch=0, step=0, steps_per_epoch=1, images=images, mean=MEAN, std=STD,
                        generator=torch.Generator().manual_seed(seed),
                        _reset_optimizer_state=lambda parameters: None)


# -- the loss's parts ----------------------------------------------------------------------------


def test_soft_encoding_sums_to_one_nearest_bin_first_and_heaviest():
    bins = gamut_ab_bins()
    generator = torch.Generator().manual_seed(0)
    ab = (torch.rand(500, 2, generator=generator) - 0.5) * 160
    indices, weights = soft_encode(ab, bins)
    assert indices.shape == weights.shape == (500, 5)
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(500))
    assert torch.equal(indices[:, 0], torch.cdist(ab, bins).argmin(dim=1))
    assert (weights[:, 0] >= weights[:, 1:].max(dim=1).values).all()
    # on an interior bin's centre: itself and its 4 neighbours at distance 10
    centre = torch.tensor([[0.0, 0.0]])
    indices, weights = soft_encode(centre, bins)
    assert bins[indices[0, 0]].tolist() == [0.0, 0.0]
    expected_centre = 1 / (1 + 4 * math.exp(-100 / 50))
    assert weights[0, 0].item() == pytest.approx(expected_centre, rel=1e-5)
    assert weights[0, 1:].tolist() == pytest.approx([expected_centre * math.exp(-2)] * 4,
                                                    rel=1e-5)


def test_smoothing_spreads_a_point_mass_by_the_gaussian():
    bins = gamut_ab_bins()
    counts = torch.zeros(len(bins))
    centre = bins.tolist().index([0.0, 0.0])
    counts[centre] = 7.0
    smoothed = smooth_distribution(counts, bins, sigma=5.0)
    assert smoothed.sum().item() == pytest.approx(1.0, abs=1e-6)
    side = bins.tolist().index([10.0, 0.0])
    diagonal = bins.tolist().index([10.0, -10.0])
    assert (smoothed[side] / smoothed[centre]).item() == pytest.approx(math.exp(-2), rel=1e-5)
    assert (smoothed[diagonal] / smoothed[centre]).item() == pytest.approx(math.exp(-4),
                                                                          rel=1e-5)
    assert torch.equal(smooth_distribution(counts, bins, sigma=0.0) > 0, counts > 0)


def test_rebalancing_weights_by_hand():
    prior = torch.tensor([0.5, 0.3, 0.2])
    mixed = [0.5 * 0.5 + 0.5 / 3, 0.5 * 0.3 + 0.5 / 3, 0.5 * 0.2 + 0.5 / 3]
    inverse = [1 / m for m in mixed]
    scale = sum(p * w for p, w in zip([0.5, 0.3, 0.2], inverse, strict=True))
    weights = rebalancing_weights(prior, mix=0.5)
    assert weights.tolist() == pytest.approx([w / scale for w in inverse], rel=1e-6)
    assert (prior * weights).sum().item() == pytest.approx(1.0, rel=1e-6)
    assert rebalancing_weights(prior, mix=1.0).tolist() == pytest.approx([1.0, 1.0, 1.0])
    # lambda = 0: the inverse prior, normalised: 1 / (Q p)
    assert rebalancing_weights(prior, mix=0.0).tolist() == pytest.approx(
        [1 / (3 * 0.5), 1 / (3 * 0.3), 1 / (3 * 0.2)], rel=1e-6)


def test_rebalanced_soft_encoded_loss_by_hand():
    bins = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    ab = torch.tensor([[2.0, 1.0], [1.0, 9.0]]).T.reshape(1, 2, 1, 2)  # two pixels
    logits = torch.tensor([[1.0, 2.0, 0.0], [0.5, -1.0, 3.0]]).T.reshape(1, 3, 1, 2)
    bin_weights = torch.tensor([0.5, 2.0, 1.5])

    def log_softmax(values):
        total = math.log(sum(math.exp(v) for v in values))
        return [v - total for v in values]

    def pixel(squared, scores):  # two nearest bins, Gaussian sigma 5, nearest bin's weight
        order = sorted(range(3), key=lambda q: squared[q])[:2]
        gauss = [math.exp(-squared[q] / 50) for q in order]
        targets = [g / sum(gauss) for g in gauss]
        log_p = log_softmax(scores)
        return bin_weights[order[0]].item() * -sum(
            t * log_p[q] for t, q in zip(targets, order, strict=True))

    first = pixel([4 + 1, 64 + 1, 4 + 81], [1.0, 2.0, 0.0])  # nearest: bin 0, then bin 1
    second = pixel([1 + 81, 81 + 81, 1 + 1], [0.5, -1.0, 3.0])  # nearest: bin 2, then bin 0
    loss = colorization_loss(logits, ab, bins, bin_weights, neighbours=2, sigma=5.0)
    assert loss.item() == pytest.approx((first + second) / 2, rel=1e-5)
    unweighted = colorization_loss(logits, ab, bins, None, neighbours=2, sigma=5.0)
    assert unweighted.item() == pytest.approx(
        (first / 0.5 + second / 1.5) / 2, rel=1e-5)


# -- the method ------------------------------------------------------------------------------


def test_bin_counts_match_the_nearest_bin_by_brute_force():
    method = _method()
    images = torch.randint(0, 256, (6, 3, 28, 28), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(3))
    ab = rgb_to_lab(images.double() / 255)[:, 1:].permute(0, 2, 3, 1).reshape(-1, 2)
    nearest = torch.cdist(ab, method.bins.double()).argmin(dim=1)
    expected = torch.bincount(nearest, minlength=len(method.bins)).double()
    assert torch.equal(method.bin_counts(images, chunk=4), expected)


def test_the_prior_is_counted_once_before_the_first_epoch_into_buffers():
    method = _method(prior_images=0)
    images = _colour_images()
    assert not bool(method.prior_ready)
    numbers = method.on_epoch_start(_context(images))
    counts = method.bin_counts(images)
    prior = smooth_distribution(counts, method.bins, 5.0)
    torch.testing.assert_close(method.bin_prior, prior)
    torch.testing.assert_close(method.bin_weights, rebalancing_weights(prior, 0.5))
    assert (method.bin_prior * method.bin_weights).sum().item() == pytest.approx(1.0, rel=1e-5)
    assert numbers["bins_seen"] == float((counts > 0).sum()) and numbers["bins"] == 261
    assert bool(method.prior_ready) and method.on_epoch_start(_context(images)) is None
    state = method.state_dict()
    assert {"bins", "bin_prior", "bin_weights", "prior_ready"} <= set(state)
    # a subset of the images, drawn with the epoch's generator, when asked
    subset = _method(prior_images=10)
    subset.on_epoch_start(_context(images))
    assert not torch.equal(subset.bin_prior, method.bin_prior)


def test_views_are_the_lightness_and_targets_the_ab_averaged_over_the_stride():
    method = _method(flip=False, output_stride=2)
    images = _colour_images(4)
    lightness, targets = method.make_views(Batch(unlabeled=images), torch.Generator())
    lab = rgb_to_lab(images.float() / 255)
    assert lightness.shape == (4, 3, 28, 28) and targets.shape == (4, 2, 14, 14)
    torch.testing.assert_close(lightness, ((lab[:, :1] - 50) / 50).expand(-1, 3, -1, -1))
    torch.testing.assert_close(targets[:, :, 3, 5], lab[:, 1:, 6:8, 10:12].mean(dim=(2, 3)))
    out = method.training_loss((lightness, targets), None)
    assert out["loss"].ndim == 0 and torch.isfinite(out["loss"])


def test_evaluation_features_come_from_the_lightness_alone():
    method = _method(flip=False).eval()
    representation = method.representations()["backbone"].eval()
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    generator = torch.Generator().manual_seed(1)
    small = torch.rand(6, 5, 4, 4, generator=generator, dtype=torch.float64)
    lab = torch.nn.functional.interpolate(small, size=28, mode="bilinear")
    lightness = 40 + 20 * lab[:, :1]  # [6, 1, 28, 28]
    pictures = []
    for chroma in (lab[:, 1:3], lab[:, 3:5], torch.zeros_like(lab[:, 1:3])):
        rgb = lab_to_rgb(torch.cat((lightness, 30 * chroma - 15), dim=1), clamp=False)
        assert rgb.min() >= 0 and rgb.max() <= 1  # in gamut: the same lightness exactly
        pictures.append(rgb.float())
    assert (pictures[0] - pictures[1]).abs().max() > 0.05  # the colours differ
    with torch.no_grad():
        features = representation((pictures[0] - mean) / std)
        for other in pictures[1:]:
            torch.testing.assert_close(representation((other - mean) / std), features,
                                       atol=1e-4, rtol=1e-4)
        # the same input as in training
        as_stored = (pictures[0] * 255).round().to(torch.uint8)
        training_input = method.make_views(Batch(unlabeled=as_stored), torch.Generator())[0]
        torch.testing.assert_close(method.backbone(training_input),
                                   representation((as_stored / 255 - mean) / std),
                                   atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(training_input[:, :1],
                               (rgb_to_lightness(as_stored / 255) - 50) / 50)
    assert lightness_input(torch.full((1, 1, 2, 2), 100.0)).unique().tolist() == [1.0]
    assert set(representation.state_dict()) == {f"backbone.{k}" for k in
                                                method.backbone.state_dict()}


def test_grey_data_is_refused_with_a_message_naming_the_colour_dataset(capsys):
    grey = DataInfo(channels=1, image_size=28, mean=(0.3,), std=(0.3,), num_images=8)
    backbone = build_backbone("convnet", in_channels=1, image_size=28, width=4, depth=2)
    with pytest.raises(UserError, match="--data fashion-mnist-m"):
        Colorization(backbone, ColorizationConfig(), grey)
    with pytest.raises(UserError, match="output-stride"):
        _method(output_stride=3)
    status = main(["pretrain", "--method", "colorization", "--data", "fashion-mnist-sample",
                   "--max-images", "16", "--out", "/nonexistent/never", "--no-progress", *TINY])
    error = capsys.readouterr().err
    assert status == 2 and "fashion-mnist-m" in error and len(error.strip().splitlines()) == 1


def test_a_run_trains_and_evaluates_end_to_end(tmp_path):
    images = _colour_images(48, seed=5).numpy()
    labels = np.arange(48) % 4
    path = tmp_path / "colour.npz"
    np.savez(path, x_train=images[:32], y_train=labels[:32], x_test=images[32:],
             y_test=labels[32:])
    run = tmp_path / "run"
    assert main(["pretrain", "--method", "colorization", "--data", f"npz:{path}", "--out",
                 str(run), "--epochs", "1", "--batch-size", "16", "--no-progress", *TINY]) == 0
    checkpoint = load_checkpoint(run)
    assert bool(checkpoint["model"]["prior_ready"])
    assert checkpoint["model"]["bin_weights"].shape == (261,)
    assert main(["evaluate", "--checkpoint", str(run), "--data", f"npz:{path}",
                 "--protocol", "knn", "--labels-per-class", "2", "--seeds", "1",
                 "--baselines", "none"]) == 0
    # the export holds the backbone alone under its own names, records the RGB -> L step,
    # loads strictly, and gives the features evaluate computes from the run folder
    exported = tmp_path / "colorization.safetensors"
    assert main(["export", "--checkpoint", str(run), "--out", str(exported)]) == 0
    with safe_open(str(exported), framework="pt") as handle:
        metadata = handle.metadata()
        keys = set(handle.keys())
    assert metadata["input_conversion"] == '"lightness"' and metadata["format_version"] == "2"
    pretrained = load_pretrained(run)
    assert keys == set(pretrained.network.backbone.state_dict())
    loaded = load_backbone(exported)
    assert isinstance(loaded.network, LightnessBackbone) and not loaded.network.training
    test_images = torch.from_numpy(images[32:])
    expected = extract_features(pretrained.network, test_images, pretrained.data.mean,
                                pretrained.data.std)
    torch.testing.assert_close(extract_features(loaded.network, test_images,
                                                loaded.preprocessing.mean,
                                                loaded.preprocessing.std), expected)
    with torch.no_grad():
        torch.testing.assert_close(loaded.network(loaded.preprocess(test_images)), expected,
                                   atol=1e-5, rtol=1e-5)
    assert expected.std(dim=0).max() > 0  # not a constant network


@pytest.mark.slow
def test_two_processes_equal_one_on_the_same_global_batch(tmp_path):
    """Loss and weights after 3 optimiser steps (so the gradients) of a 2-process gloo run
    equal one process on the same global batch of colour images; the colour prior, counted
    in on_epoch_start from 40 of the 64 images drawn at random, is the same on every device
    (the harness compares every buffer) and was really counted."""
    from engine_harness import compare_one_and_two_processes

    single = compare_one_and_two_processes(
        tmp_path, "colorization", {"decoder_width": 4, "prior_images": 40},
        {"name": "convnet", "width": 4, "depth": 2, "feature_dim": 8}, channels=3)
    state = single["state"]
    assert bool(state["prior_ready"])
    assert not torch.allclose(state["bin_weights"], torch.ones_like(state["bin_weights"]))
    assert all(math.isfinite(loss) for loss in single["losses"])


def test_an_export_with_an_unknown_input_conversion_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    from fewlabels.models import Preprocessing, save_backbone

    method = _method()
    path = save_backbone(method.representations()["backbone"], tmp_path / "c.safetensors",
                         architecture={"name": "convnet", "width": 4, "depth": 2,
                                       "options": {"feature_dim": 8}},
                         preprocessing=Preprocessing(28, 3, MEAN, STD))
    assert isinstance(load_backbone(path).network, LightnessBackbone)
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    save_file(load_file(str(path)), str(path), metadata={**metadata,
                                                         "input_conversion": '"sepia"'})
    with pytest.raises(UserError, match="input conversion 'sepia'.*upgrade fewlabels"):
        load_backbone(path)
