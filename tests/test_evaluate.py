"""Tests of fewlabels.evaluate (kNN, linear probe, features, baselines, label efficiency) and
of the label-efficiency plot. Small synthetic data only: the whole file runs in seconds."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest
import torch
from torch import nn

from fewlabels.data.imageset import ImageSet
from fewlabels.errors import UserError
from fewlabels.evaluate import (
    BackboneFeatures,
    Cell,
    FeatureCache,
    RawPixels,
    Results,
    evaluate_label_efficiency,
    extract_features,
    feature_statistics,
    file_digest,
    knn_accuracy,
    knn_predict,
    linear_probe,
    random_init_backbone,
    raw_pixel_features,
    supervised_steps,
    train_supervised,
)
from fewlabels.evaluate.baselines import translate_and_flip
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


def test_linear_probe_is_near_chance_on_random_labels_and_deterministic() -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(800, 16, generator=generator)
    y = torch.randint(0, 4, (800,), generator=generator)
    first = linear_probe(x[:400], y[:400], x[400:], y[400:], num_classes=4)
    assert 0.1 < first.accuracy < 0.4
    second = linear_probe(x[:400], y[:400], x[400:], y[400:], num_classes=4)
    assert first == second


def test_feature_statistics_and_given_statistics() -> None:
    features = torch.tensor([[1.0, 5.0], [3.0, 5.0]])
    mean, std = feature_statistics(features)
    assert mean.tolist() == [2.0, 5.0] and std.tolist() == [1.0, 1.0]  # constant column -> 1
    train_x, train_y = blobs(10, 3, 8, 0.5, seed=0)
    test_x, test_y = blobs(10, 3, 8, 0.5, seed=1)
    default = linear_probe(train_x, train_y, test_x, test_y, num_classes=3)
    given = linear_probe(train_x, train_y, test_x, test_y, num_classes=3,
                         statistics=feature_statistics(train_x))
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
    train = bright_dark_images(20, seed=0)
    test = bright_dark_images(50, seed=1)
    model = train_supervised(lambda: TinyBackbone(), train, mean=[0.5], std=[0.3],
                             steps=30, batch_size=16, lr=1e-2, seed=0)
    assert model.accuracy(test) > 0.95
    assert model.settings["steps"] == 30 and model.settings["batch_size"] == 16
    assert not model.training


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

    text = results.to_json()
    assert Results.from_json(text).to_json() == text
    table = results.table()
    assert "1/class" in table and "all" in table and "±" in table and "scratch" in table

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
