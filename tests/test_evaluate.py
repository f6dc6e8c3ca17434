"""Tests of fewlabels.evaluate (kNN, linear probe, features, baselines, label efficiency) and
of the label-efficiency plot. Small synthetic data only: the whole file runs in seconds."""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from fewlabels.augment.geometric import translate_and_flip
from fewlabels.data.imageset import ImageSet
from fewlabels.data.splits import make_split, stratified_folds
from fewlabels.errors import UserError
from fewlabels.evaluate import (
    BackboneFeatures,
    Cell,
    FeatureCache,
    FeaturePreprocessing,
    RawPixels,
    Results,
    budget_label,
    evaluate_label_efficiency,
    extract_features,
    feature_statistics,
    file_digest,
    knn_accuracy,
    knn_predict,
    label_efficiency,
    linear_probe,
    random_init_backbone,
    raw_pixel_features,
    supervised_steps,
    train_supervised,
)
from fewlabels.evaluate.linear_probe import DEFAULT_WEIGHT_DECAY, cross_validation_folds
from fewlabels.report.plot import plot_label_efficiency


@pytest.fixture(autouse=True)
def one_thread():
    """The tensors here are tiny: extra threads only add hand-off cost (on a busy shared CPU,
    seconds per test instead of milliseconds)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class TinyBackbone(nn.Module):
    """conv -> BN -> ReLU -> global average pool; records the mode it ran in."""

    def __init__(self, in_channels: int = 1, feature_dim: int = 8) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, feature_dim, 3, padding=1)
        self.norm = nn.BatchNorm2d(feature_dim)
        self.feature_dim = feature_dim
        self.modes: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.modes.append(self.training)
        return torch.relu(self.norm(self.conv(x))).mean(dim=(2, 3))


def bright_dark_images(per_class: int, seed: int, size: int = 8) -> ImageSet:
    """Class 0: dark images (pixels 0-99), class 1: bright images (pixels 156-255)."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(2).repeat_interleave(per_class)
    noise = torch.randint(0, 100, (2 * per_class, 1, size, size), generator=generator)
    images = (noise + 156 * labels.view(-1, 1, 1, 1)).to(torch.uint8)
    return ImageSet(images, labels, ["dark", "bright"], name="bright-dark")


# --- kNN -----------------------------------------------------------------------------------

def hand_case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # cosine similarities to the query (1, 0): 1.0 (class 1), 0.6, 0.6 (class 0), -1.0 (class 0)
    train = torch.tensor([[2.0, 0.0], [0.6, 0.8], [0.6, -0.8], [-3.0, 0.0]])
    return train, torch.tensor([1, 0, 0, 0]), torch.tensor([[5.0, 0.0]])


def test_knn_weighting_overturns_the_majority() -> None:
    train, labels, query = hand_case()
    # k=3, T=0.1: class 1 gets exp(10) = 22026, class 0 gets 2 exp(6) = 807 -> class 1.
    assert math.exp(1 / 0.1) > 2 * math.exp(0.6 / 0.1)
    assert knn_predict(train, labels, query, num_classes=2, k=3, temperature=0.1).item() == 1
    # T=10: class 1 gets exp(0.1) = 1.105, class 0 gets 2 exp(0.06) = 2.124 -> the majority.
    assert math.exp(1 / 10) < 2 * math.exp(0.6 / 10)
    assert knn_predict(train, labels, query, num_classes=2, k=3, temperature=10.0).item() == 0
    # k=1: only the nearest neighbour votes.
    assert knn_predict(train, labels, query, num_classes=2, k=1, temperature=10.0).item() == 1


def test_knn_k_is_clamped_to_the_training_set() -> None:
    train, labels, query = hand_case()
    # k=200 uses all 4 points; at T=0.3: class 1 exp(3.33) = 28.0 beats class 0
    # 2 exp(2) + exp(-3.33) = 14.8.
    assert knn_predict(train, labels, query, num_classes=2, k=200, temperature=0.3).item() == 1
    # With a large temperature the three class-0 points win: exp(.1) < 2 exp(.06) + exp(-.1).
    assert knn_predict(train, labels, query, num_classes=2, k=200, temperature=10.0).item() == 0


def test_knn_is_chunk_invariant_and_scores_accuracy() -> None:
    generator = torch.Generator().manual_seed(0)
    train = torch.randn(50, 6, generator=generator)
    labels = torch.randint(0, 3, (50,), generator=generator)
    queries = torch.randn(23, 6, generator=generator)
    whole = knn_predict(train, labels, queries, num_classes=3, k=7)
    chunked = knn_predict(train, labels, queries, num_classes=3, k=7, chunk_size=4)
    assert torch.equal(whole, chunked)
    # each training point is its own nearest neighbour (with a tiny temperature)
    accuracy = knn_accuracy(train, labels, train, labels, num_classes=3, k=5, temperature=0.01)
    assert accuracy == 1.0


# --- linear probe --------------------------------------------------------------------------

def blobs(per_class: int, classes: int, dim: int, spread: float, seed: int):
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=torch.Generator().manual_seed(99)) * 3
    labels = torch.arange(classes).repeat(per_class)
    features = centres[labels] + spread * torch.randn(len(labels), dim, generator=generator)
    return features, labels


def test_linear_probe_separates_separable_data() -> None:
    train_x, train_y = blobs(30, 4, 16, 0.5, seed=0)
    test_x, test_y = blobs(30, 4, 16, 0.5, seed=1)
    result = linear_probe(train_x, train_y, test_x, test_y, num_classes=4)
    assert result.accuracy == 1.0 and result.train_accuracy == 1.0
    # one label per class (4 training points) still works
    one_shot = linear_probe(train_x[:4], train_y[:4], test_x, test_y, num_classes=4)
    assert one_shot.train_accuracy == 1.0 and one_shot.accuracy > 0.9


def test_linear_probe_returns_its_classifier() -> None:
    """The returned weights are the probe that was scored: its argmax on the test features
    gives the reported accuracy, and its probabilities are a softmax of the prepared
    features' logits."""
    train_x, train_y = blobs(10, 3, 8, 2.0, seed=0)
    test_x, test_y = blobs(20, 3, 8, 2.0, seed=1)
    result = linear_probe(train_x, train_y, test_x, test_y, num_classes=3)
    probabilities = result.probabilities(test_x)
    assert probabilities.shape == (60, 3)
    assert torch.allclose(probabilities.sum(1), torch.ones(60))
    accuracy = (probabilities.argmax(1) == test_y).float().mean().item()
    assert accuracy == pytest.approx(result.accuracy)
    prepared = result.preprocessing(test_x)
    by_hand = (prepared @ result.weight.T + result.bias).softmax(1)
    assert torch.allclose(probabilities, by_hand)


def test_linear_probe_is_near_chance_on_random_labels_and_deterministic() -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(800, 16, generator=generator)
    y = torch.randint(0, 4, (800,), generator=generator)
    first = linear_probe(x[:400], y[:400], x[400:], y[400:], num_classes=4)
    assert 0.1 < first.accuracy < 0.4
    second = linear_probe(x[:400], y[:400], x[400:], y[400:], num_classes=4)
    assert first == second


def test_feature_preprocessing() -> None:
    features = torch.tensor([[3.0, 4.0], [0.0, 2.0], [6.0, 0.0]])
    mean, std = feature_statistics(features[:2])
    assert mean.tolist() == [1.5, 3.0] and std.tolist() == [1.5, 1.0]
    assert feature_statistics(torch.tensor([[1.0, 5.0], [3.0, 5.0]]))[1].tolist() == [1.0, 1.0]
    # l2: every row scaled to norm sqrt(D) = sqrt(2); (3, 4) has norm 5
    l2 = FeaturePreprocessing.fit(features, "l2")
    torch.testing.assert_close(l2(features[:1]), torch.tensor([[0.6, 0.8]]) * math.sqrt(2))
    assert l2.mean is None
    # standardise: the statistics of the features it was fitted on, not of what it prepares
    standardise = FeaturePreprocessing.fit(features, "standardise")
    torch.testing.assert_close(standardise(features).mean(0), torch.zeros(2))
    torch.testing.assert_close(standardise(torch.tensor([[3.0, 2.0]])), torch.tensor([[0.0, 0.0]]))
    # l2+standardise: the statistics are those of the normalised rows
    both = FeaturePreprocessing.fit(features, "l2+standardise")
    torch.testing.assert_close(both(features).mean(0), torch.zeros(2))
    torch.testing.assert_close(both(features).std(0, correction=0), torch.ones(2))
    with pytest.raises(ValueError):
        FeaturePreprocessing.fit(features, "whiten")
    # linear_probe's default is the default preprocessing fitted on the training features
    train_x, train_y = blobs(10, 3, 8, 0.5, seed=0)
    test_x, test_y = blobs(10, 3, 8, 0.5, seed=1)
    default = linear_probe(train_x, train_y, test_x, test_y, num_classes=3)
    given = linear_probe(train_x, train_y, test_x, test_y, num_classes=3,
                         preprocessing=FeaturePreprocessing.fit(train_x))
    assert default == given


def test_weight_decay_is_chosen_on_validation() -> None:
    decays = (1.0, 1e-2, 1e-4)
    # (a) the label is x0 - x1, hidden under a large shared nuisance z: the class-mean
    # direction that strong decay converges to fails, a weakly decayed fit learns x0 - x1.
    generator = torch.Generator().manual_seed(0)
    z, signal = torch.randn(900, generator=generator) * 5, torch.randn(900, generator=generator)
    x = torch.stack([z + signal, z, torch.randn(900, generator=generator)], dim=1)
    y = (signal > 0).long()
    weak = linear_probe(x[:300], y[:300], x[600:], y[600:], num_classes=2,
                        validation_features=x[300:600], validation_labels=y[300:600],
                        weight_decays=decays)
    # (b) 30 points in 20 dimensions, 30% of their labels flipped: weak decay fits the noise,
    # strong decay (close to the class-mean direction) generalises best.
    def noisy(per_class: int, seed: int, flip: float) -> tuple[torch.Tensor, torch.Tensor]:
        generator = torch.Generator().manual_seed(seed)
        labels = torch.arange(2).repeat(per_class)
        features = torch.randn(2 * per_class, 20, generator=generator)
        features[:, 0] += 1.5 * (2 * labels - 1)
        flipped = torch.rand(2 * per_class, generator=generator) < flip
        return features, torch.where(flipped, 1 - labels, labels)

    (train_x, train_y), (validation_x, validation_y) = noisy(15, 0, 0.3), noisy(300, 1, 0.0)
    strong = linear_probe(train_x, train_y, *noisy(300, 2, 0.0), num_classes=2,
                          validation_features=validation_x, validation_labels=validation_y,
                          weight_decays=decays)
    assert set(weak.validation_accuracies) == set(decays) and weak.weight_decay in decays
    assert weak.weight_decay < strong.weight_decay == 1.0
    assert weak.validation_accuracy == max(weak.validation_accuracies.values())
    assert weak.accuracy > 0.9


IDENTITY = FeaturePreprocessing("standardise", torch.zeros(1), torch.ones(1))


def test_cross_validation_on_a_hand_computable_case() -> None:
    """1-D, 2 labels per class -> 2 folds of one label per class. A fit on one point per class
    puts the boundary at their midpoint for any decay (the symmetric optimum; the bias is not
    decayed), so every fold's accuracy is known by hand, every decay ties, and the tie goes
    to the largest decay."""
    x = torch.tensor([[-5.0], [-1.0], [2.0], [6.0]])
    y = torch.tensor([0, 0, 1, 1])
    decays = (1.0, 1e-2, 1e-4)
    for seed in range(4):
        folds = stratified_folds(y, 2, seed)
        expected = []
        for k, judged in enumerate(folds):  # fold k is judged by the fit on the other one
            midpoint = x[folds[1 - k]].mean().item()
            expected.append(((x[judged, 0] > midpoint).long() == y[judged]).float().mean().item())
        # by hand: with -5 and 6 together, both midpoints are 0.5 and every point is placed
        # right; with -5 and 2 together the midpoints are -1.5 and 2.5, and each misplaces one
        with_minus_five = next(fold.tolist() for fold in folds if 0 in fold.tolist())
        assert expected == {(0, 3): [1.0, 1.0], (0, 2): [0.5, 0.5]}[tuple(with_minus_five)]
        result = linear_probe(x, y, torch.tensor([[-9.0], [9.0]]), torch.tensor([0, 1]),
                              num_classes=2, weight_decays=decays, preprocessing=IDENTITY,
                              seed=seed)
        assert result.chosen_by == "cross-validation"
        assert (result.folds, result.folds_evaluated) == (2, 2)
        for decay in decays:
            assert result.fold_accuracies[decay] == expected
        assert result.weight_decay == 1.0  # ties go to the larger decay
        assert result.validation_accuracy == pytest.approx(sum(expected) / 2)
        assert result.accuracy == 1.0 and result.train_accuracy == 1.0
    # both pairings are drawn by these seeds
    pairings = {tuple(sorted(map(tuple, (f.tolist() for f in stratified_folds(y, 2, s)))))
                for s in range(4)}
    assert pairings == {((0, 2), (1, 3)), ((0, 3), (1, 2))}


def test_one_label_per_class_uses_the_default_decay() -> None:
    train_x, train_y = blobs(1, 4, 16, 0.5, seed=0)
    test_x, test_y = blobs(30, 4, 16, 0.5, seed=1)
    result = linear_probe(train_x, train_y, test_x, test_y, num_classes=4, default_weight_decay=0.3)
    assert (result.chosen_by, result.weight_decay) == ("default", 0.3)
    assert result.reason == "a class has a single label"
    assert result.validation_accuracies == {} and result.folds == 0
    assert result.accuracy > 0.9
    # one class with a single label is enough to rule out cross-validation
    more_x, more_y = blobs(3, 4, 16, 0.5, seed=2)
    keep = (more_y != 2) | (torch.arange(len(more_y)) < 4)
    uneven = linear_probe(more_x[keep], more_y[keep], test_x, test_y, num_classes=4)
    assert torch.bincount(more_y[keep]).tolist() == [3, 3, 1, 3]
    assert (uneven.chosen_by, uneven.weight_decay) == ("default", DEFAULT_WEIGHT_DECAY)
    # two labels per class: cross-validated, on 2 folds
    two = linear_probe(*blobs(2, 4, 16, 0.5, seed=3), test_x, test_y, num_classes=4)
    assert (two.chosen_by, two.folds) == ("cross-validation", 2)
    off = linear_probe(*blobs(2, 4, 16, 0.5, seed=3), test_x, test_y, num_classes=4, folds=0)
    assert (off.chosen_by, off.reason) == ("default", "cross-validation turned off")


def test_cross_validation_folds_and_their_limit() -> None:
    assert cross_validation_folds(torch.tensor([0, 0, 1, 1, 1])) == 2
    assert cross_validation_folds(torch.tensor([0] * 9 + [1] * 7)) == 5
    assert cross_validation_folds(torch.tensor([0] * 9 + [1] * 7), folds=3) == 3
    assert cross_validation_folds(torch.tensor([0, 0, 1])) == 0
    assert cross_validation_folds(torch.tensor([0, 0, 2, 2])) == 2  # absent classes ignored
    x, y = blobs(10, 3, 8, 4.0, seed=0)  # 30 overlapping points -> 5 folds of 6
    test_x, test_y = blobs(10, 3, 8, 4.0, seed=1)
    every = linear_probe(x, y, test_x, test_y, num_classes=3, seed=7)
    assert (every.folds, every.folds_evaluated) == (5, 5)
    assert all(len(accuracies) == 5 for accuracies in every.fold_accuracies.values())
    assert 0.3 < every.validation_accuracy < 1.0
    # folds are fitted until 12 images are validated: two folds of 6
    two = linear_probe(x, y, test_x, test_y, num_classes=3, seed=7, cross_validation_images=12)
    assert (two.folds, two.folds_evaluated) == (5, 2)
    for decay, accuracies in two.fold_accuracies.items():
        assert accuracies == every.fold_accuracies[decay][:2]
    # the same seed gives the same folds and the same result; another seed other folds
    assert linear_probe(x, y, test_x, test_y, num_classes=3, seed=7) == every
    other = linear_probe(x, y, test_x, test_y, num_classes=3, seed=8)
    assert other.fold_accuracies != every.fold_accuracies


# --- features and cache --------------------------------------------------------------------

def test_extract_features_restores_mode_and_is_batch_size_invariant() -> None:
    torch.manual_seed(0)
    backbone = TinyBackbone()
    images = torch.randint(0, 256, (10, 1, 6, 6), dtype=torch.uint8)
    backbone.train()
    small = extract_features(backbone, images, [0.5], [0.25], batch_size=3)
    large = extract_features(backbone, images, [0.5], [0.25], batch_size=1024)
    assert backbone.training and not any(backbone.modes)
    assert small.shape == (10, 8) and small.dtype == torch.float32
    torch.testing.assert_close(small, large)
    backbone.eval()
    extract_features(backbone, images, [0.5], [0.25])
    assert not backbone.training


def test_feature_cache_computes_once_and_keys_by_part(tmp_path) -> None:
    calls: list[str] = []

    def compute(value: float):
        def run() -> torch.Tensor:
            calls.append("x")
            return torch.full((3, 2), value)
        return run

    key = {"checkpoint": "abc", "dataset": "fashion-mnist", "part": "train", "image_size": 28}
    first = FeatureCache(tmp_path).get_or_compute(key, compute(1.0))
    again = FeatureCache(tmp_path).get_or_compute(dict(reversed(key.items())), compute(9.0))
    assert len(calls) == 1 and torch.equal(first, again)
    other = FeatureCache(tmp_path).get_or_compute({**key, "part": "test"}, compute(2.0))
    assert len(calls) == 2 and other[0, 0].item() == 2.0
    assert len(list(tmp_path.glob("*.pt"))) == 2 and not list(tmp_path.glob(".*"))

    checkpoint = tmp_path / "checkpoint.bin"
    checkpoint.write_bytes(b"weights" * 1000)
    assert file_digest(checkpoint, chunk_size=64) == hashlib.sha256(b"weights" * 1000).hexdigest()


def test_backbone_features_use_the_cache(tmp_path) -> None:
    backbone = random_init_backbone(TinyBackbone, seed=3)
    twin = random_init_backbone(TinyBackbone, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(backbone.parameters(), twin.parameters(),
                                                 strict=True))
    images = bright_dark_images(3, seed=0)
    provider = BackboneFeatures(backbone, [0.5], [0.3], cache=FeatureCache(tmp_path),
                                cache_key={"checkpoint": "random-3"})
    first = provider(images, "train")
    runs = len(backbone.modes)
    second = provider(images, "train")
    assert len(backbone.modes) == runs and torch.equal(first, second)


# --- baselines -----------------------------------------------------------------------------

def test_raw_pixels_are_normalised_and_flat() -> None:
    images = torch.tensor([[[[0, 255], [51, 102]]]], dtype=torch.uint8)
    features = raw_pixel_features(images, [0.2], [0.4])
    expected = (torch.tensor([[0.0, 1.0, 0.2, 0.4]]) - 0.2) / 0.4
    torch.testing.assert_close(features, expected)


def test_translate_and_flip_keeps_shapes_and_content() -> None:
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(5, 2, 6, 6, generator=generator)
    same = translate_and_flip(images, max_shift=0, flip=False, generator=generator)
    assert torch.equal(same, images)
    constant = torch.full((4, 1, 6, 6), 0.3)
    moved = translate_and_flip(constant, max_shift=2, flip=True, generator=generator)
    assert moved.shape == constant.shape and torch.equal(moved, constant)


def test_supervised_steps_scale_and_are_capped() -> None:
    assert supervised_steps(10, 256) == 200
    assert supervised_steps(1000, 256) == 200
    assert supervised_steps(10_000, 256) == 30 * 40
    assert supervised_steps(10_000, 128) == 2000
    assert supervised_steps(60_000, 256) == 2000


def test_supervised_from_scratch_learns_bright_versus_dark() -> None:
    """The baseline still learns a separable toy problem now that it trains on the engine."""
    train = bright_dark_images(20, seed=0)
    test = bright_dark_images(50, seed=1)
    model = train_supervised(lambda: TinyBackbone(), train, mean=[0.5], std=[0.3],
                             steps=30, batch_size=16, lr=1e-2, seed=0)
    assert model.accuracy(test) > 0.95
    assert model.settings["steps"] == 30 and model.settings["batch_size"] == 16
    assert not model.training
    # trained by the engine's loop, as the supervised classifier method, with the
    # baseline's AdamW at the asked learning rate (the engine scales a recipe's per 256)
    assert model.settings["method"] == "supervised" and model.settings["optimizer"] == "adamw"
    assert model.settings["lr"] == pytest.approx(1e-2) and model.settings["from"] == "scratch"
    assert model.settings["max_shift"] == 2 and model.settings["ema_decay"] == pytest.approx(2 / 3)


# --- label efficiency, table, JSON, plot ---------------------------------------------------

def test_cell_mean_and_sample_std() -> None:
    cell = Cell("r", "knn", 10, [0, 1, 2], [0.5, 0.7, 0.9])
    assert cell.mean == pytest.approx(0.7) and cell.std == pytest.approx(0.2)
    assert Cell("r", "knn", None, [0], [0.8]).std == 0.0


def test_label_efficiency_structure_json_and_plot(tmp_path) -> None:
    train, test = bright_dark_images(12, seed=0), bright_dark_images(10, seed=1)

    def brightness(images: ImageSet) -> torch.Tensor:  # [N, 2], pointing by dark/bright
        centred = images.images.float().mean(dim=(1, 2, 3)) / 255 - 0.5
        return torch.stack([centred, torch.full_like(centred, 0.05)], dim=1)

    given = (brightness(train), brightness(test))
    labeled_sizes: list[int] = []

    class Oracle:
        settings = {"steps": 0}

        def predict(self, images_uint8: torch.Tensor) -> torch.Tensor:
            return (images_uint8.float().mean(dim=(1, 2, 3)) > 128).long()

    def supervised(labeled: ImageSet, seed: int) -> Oracle:
        labeled_sizes.append(len(labeled))
        return Oracle()

    results = evaluate_label_efficiency(
        {"pixels": RawPixels([0.5], [0.3]), "brightness": given}, train, test,
        labels_per_class=(1, 4, None), seeds=(0, 1, 2), validation_per_class=2, knn_k=5,
        weight_decays=(1.0, 1e-2), supervised=supervised,
    )
    assert results.budgets() == [1, 4, None]
    assert results.rows() == [("pixels", "knn"), ("pixels", "linear"), ("brightness", "knn"),
                              ("brightness", "linear"), ("scratch", "supervised")]
    assert len(results.cells) == 5 * 3
    for cell in results.cells:
        assert cell.seeds == ([0] if cell.labels_per_class is None else [0, 1, 2])
        assert cell.mean == pytest.approx(np.mean(cell.values))
        if len(cell.values) > 1:
            assert cell.std == pytest.approx(np.std(cell.values, ddof=1))
    assert labeled_sizes == [2, 2, 2, 8, 8, 8, 20]  # 12 per class minus 2 for validation
    assert results.cell("brightness", "linear", 4).mean == 1.0
    assert results.cell("pixels", "knn", 1).details[0]["k"] == 2
    assert results.settings["all_labels_per_class"] == 10
    # the probe's 2 validation labels per class count in what it used; kNN and the
    # supervised baseline read only the budget's labels
    for budget, knn_used, probe_used in ((1, 1, 3), (4, 4, 6), (None, 10, 12)):
        for name in ("pixels", "brightness"):
            linear, knn = results.cell(name, "linear", budget), results.cell(name, "knn", budget)
            assert linear.labels_used_per_class == probe_used
            assert linear.labels_used == 2 * probe_used
            assert (knn.labels_used_per_class, knn.labels_used) == (knn_used, 2 * knn_used)
            assert all(d["weight_decay_chosen_by"] == "validation" for d in linear.details)
        assert results.cell("scratch", "supervised", budget).labels_used == 2 * knn_used
        assert results.settings["labels_used"][budget_label(budget)] == {
            "knn": {"per_class": knn_used, "total": 2 * knn_used},
            "linear": {"per_class": probe_used, "total": 2 * probe_used},
            "supervised": {"per_class": knn_used, "total": 2 * knn_used},
        }
    assert results.settings["validation_per_class"] == 2

    text = results.to_json()
    assert Results.from_json(text).to_json() == text
    table = results.table()
    assert "1/class" in table and "all" in table and "±" in table and "scratch" in table
    assert "2 more labeled images per class" in table and "k+2" in table

    path = plot_label_efficiency(results, tmp_path / "plots" / "curve.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    results.save_json(tmp_path / "results.json")
    assert Results.from_json((tmp_path / "results.json").read_text()).to_json() == text


def test_label_efficiency_rejects_too_large_budgets_and_unknown_protocols() -> None:
    train, test = bright_dark_images(5, seed=0), bright_dark_images(5, seed=1)
    features = {"f": (torch.randn(10, 3), torch.randn(10, 3))}
    with pytest.raises(UserError):
        evaluate_label_efficiency(features, train, test, labels_per_class=(10,),
                                  validation_per_class=0)
    with pytest.raises(UserError):
        evaluate_label_efficiency(features, train, test, protocols=("svm",),
                                  labels_per_class=(1,), validation_per_class=0)


def three_class_problem(per_class: int, seed: int) -> tuple[ImageSet, torch.Tensor]:
    """An image set (the images do not matter) with overlapping 8-d features for 3 classes."""
    features, labels = blobs(per_class, 3, 8, 3.0, seed=seed)
    images = torch.zeros(len(labels), 1, 4, 4, dtype=torch.uint8)
    return ImageSet(images, labels, ["a", "b", "c"], name=f"blobs-{seed}"), features


def test_the_protocol_reads_no_label_outside_the_budget(monkeypatch) -> None:
    """Every train label outside a split's labeled set is poisoned (shifted to another class)
    and nothing changes: not the accuracies, not the chosen decays, not the cross-validation
    record. ``make_split`` is kept on the honest labels, so both runs draw the same split (it
    defines the budget: which images are labeled)."""
    train, train_features = three_class_problem(12, seed=0)
    test, test_features = three_class_problem(20, seed=1)
    honest = train.labels.clone()
    monkeypatch.setattr(label_efficiency, "make_split",
                        lambda _labels, *args, **kwargs: make_split(honest, *args, **kwargs))
    seen: list[list[int]] = []

    class Majority:
        def __init__(self, labels: torch.Tensor) -> None:
            self.label = int(torch.bincount(labels).argmax())

        def predict(self, images_uint8: torch.Tensor) -> torch.Tensor:
            return torch.full((len(images_uint8),), self.label)

    def supervised(labeled: ImageSet, seed: int) -> Majority:
        seen.append(labeled.labels.tolist())
        return Majority(labeled.labels)

    def run(labels: torch.Tensor, budget: int, seed: int, validation: int = 0) -> Results:
        poisoned_train = ImageSet(train.images, labels, train.class_names, name="train")
        return evaluate_label_efficiency(
            {"blobs": (train_features, test_features)}, poisoned_train, test,
            labels_per_class=(budget,), seeds=(seed,), validation_per_class=validation,
            knn_k=5, supervised=supervised)

    for budget in (1, 2, 5):
        for seed in (0, 1):
            labeled = make_split(honest, budget, seed).labeled
            poisoned = (honest + 1) % 3
            poisoned[labeled] = honest[labeled]
            assert (poisoned != honest).sum() == len(honest) - len(labeled)
            clean, dirty = run(honest, budget, seed), run(poisoned, budget, seed)
            assert seen[-1] == seen[-2] == honest[labeled].tolist()
            assert clean.to_dict()["cells"] == dirty.to_dict()["cells"]
            chosen_by = clean.cell("blobs", "linear", budget).details[0]["weight_decay_chosen_by"]
            assert chosen_by == ("default" if budget == 1 else "cross-validation")
    # The check has teeth: a probe given a validation part (whose labels then count in its
    # budget) reads them, and poisoning them shows.
    split = make_split(honest, 2, 0, validation_per_class=3)
    poisoned = honest.clone()
    poisoned[split.validation] = (honest[split.validation] + 1) % 3
    clean, dirty = run(honest, 2, 0, validation=3), run(poisoned, 2, 0, validation=3)
    assert (clean.cell("blobs", "linear", 2).details[0]["validation_accuracies"]
            != dirty.cell("blobs", "linear", 2).details[0]["validation_accuracies"])


def test_default_evaluation_uses_no_validation_labels() -> None:
    """By default the budget is every label used: cross-validation within it (a fixed decay
    at 1 label per class), and the JSON says so."""
    train, train_features = three_class_problem(12, seed=0)
    test, test_features = three_class_problem(20, seed=1)
    results = evaluate_label_efficiency({"blobs": (train_features, test_features)}, train, test,
                                        labels_per_class=(1, 4, None), seeds=(0, 1), knn_k=5)
    assert results.settings["validation_per_class"] == 0
    assert "cross-validation" in results.settings["weight_decay_selection"]
    assert results.settings["cross_validation"]["folds_evaluated"] == {
        "1/class": ["default"], "4/class": ["4 of 4 folds"], "all": ["5 of 5 folds"]}
    for budget, used, folds in ((1, 1, 0), (4, 4, 4), (None, 12, 5)):
        cell = results.cell("blobs", "linear", budget)
        assert (cell.labels_used_per_class, cell.labels_used) == (used, 3 * used)
        assert results.settings["labels_used"][budget_label(budget)]["linear"]["total"] == 3 * used
        for seed, detail in zip(cell.seeds, cell.details, strict=True):
            if folds == 0:
                assert detail["weight_decay_chosen_by"] == "default"
                assert detail["weight_decay"] == DEFAULT_WEIGHT_DECAY
                continue
            assert detail["weight_decay_chosen_by"] == "cross-validation"
            assert detail["folds"] == detail["folds_evaluated"] == folds
            decays = [decay for decay, _, _ in detail["cross_validation_accuracies"]]
            means = {decay: mean for decay, mean, _ in detail["cross_validation_accuracies"]}
            assert decays == sorted(decays, reverse=True)
            assert detail["weight_decay"] == max(means, key=lambda d: (means[d], d))
            for _, mean, per_fold in detail["cross_validation_accuracies"]:
                assert len(per_fold) == folds and mean == pytest.approx(np.mean(per_fold))
            # the folds are those of the split seed, so the record is reproducible
            labeled = make_split(train.labels, budget, seed).labeled
            again = linear_probe(train_features[labeled], train.labels[labeled], test_features,
                                 test.labels, num_classes=3, seed=seed,
                                 preprocessing=FeaturePreprocessing.fit(train_features))
            assert again.accuracy == cell.values[cell.seeds.index(seed)]
    table = results.table()
    assert "cross-validated within the budget's labels" in table and "k+" not in table
    # results written before labels were counted still load, and say nothing of them
    old = results.to_dict()
    for cell in old["cells"]:
        del cell["labels_used"], cell["labels_used_per_class"]
    for key in ("labels_used", "weight_decay_selection", "validation_per_class"):
        del old["settings"][key]
    reloaded = Results.from_json(json.dumps(old))
    assert reloaded.cells[0].labels_used is None and "linear:" not in reloaded.table()
