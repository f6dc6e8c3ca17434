"""`fewlabels evaluate --protocol clusters` and `fewlabels clusters` end to end on a tiny run,
with a method's own cluster head played by a deterministic toy head."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from fewlabels.augment.convert import normalize, to_float
from fewlabels.cli import main
from fewlabels.clustering.metrics import cluster_scores
from fewlabels.commands import clusters as clusters_command
from fewlabels.commands import parse
from fewlabels.data import load_dataset
from fewlabels.evaluate import FeatureCache, HeadClusters
from fewlabels.evaluate.table import Results
from fewlabels.methods import METHODS
from fewlabels.report.cluster_grid import (
    CAPTION_WIDTH,
    GAP,
    TITLE_HEIGHT,
    choose_rows,
    grid_pixel_size,
)
from fewlabels.runs import load_pretrained


class BrightnessHead(nn.Module):
    """Three clusters by mean normalised brightness (dark, middle, bright): a cluster head
    whose assignments a test can compute on its own."""

    centres = (-0.6, -0.2, 0.2)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        brightness = images.mean((1, 2, 3))[:, None]  # [N, 1]
        return -(brightness - torch.tensor(self.centres)).pow(2)  # [N, 3]


def _brightness_clusters(images_uint8, mean, std) -> torch.Tensor:
    return BrightnessHead()(normalize(to_float(images_uint8), mean, std)).argmax(1)


@pytest.fixture
def with_toy_head(monkeypatch):
    monkeypatch.setattr(METHODS.get("simclr"), "cluster_heads",
                        lambda self: {"brightness": BrightnessHead()}, raising=True)


@pytest.fixture(scope="module")
def sample():
    return load_dataset("fashion-mnist-sample")


def test_evaluate_clusters_scores_kmeans_for_every_representation(run_dir, tmp_path, capsys):
    path = tmp_path / "c.json"
    status = main(["evaluate", "--checkpoint", str(run_dir), "--data", "fashion-mnist-sample",
                   "--protocol", "clusters", "--seeds", "2", "--cluster-restarts", "1",
                   "--baselines", "raw,supervised", "--json", str(path)])
    out = capsys.readouterr().out
    assert status == 0
    assert "NMI" in out and "ARI" in out and "clusters matched to classes one to" in out
    data = json.loads(path.read_text())
    assert data["cells"] == []  # no label-efficiency protocol ran, no supervised baseline
    rows = data["clusters"]["rows"]
    # (random init is one more BackboneFeatures, like the run's own: left out for speed)
    assert [(r["representation"], r["clusters_from"]) for r in rows] == [
        ("simclr", "k-means"), ("raw pixels", "k-means")]
    for row in rows:
        assert row["num_clusters"] == 10 and row["seeds"] == [0, 1]
        assert len(row["scores"]) == 2 and len(row["details"][0]["inertias"]) == 1
        for score in row["scores"]:
            assert 0 <= score["nmi"] <= 1 and -1 <= score["ari"] <= 1
            assert 0.1 <= score["accuracy"] <= score["purity"] <= 1
            assert score["clusters_in_use"] <= 10
    # k-means on raw Fashion-MNIST pixels finds much of the class structure
    raw = rows[1]
    assert raw["nmi"]["mean"] > 0.3 and raw["accuracy"]["mean"] > 0.3
    assert data["clusters"]["settings"]["kmeans"]["features"] == "L2-normalised"


def test_evaluate_clusters_with_other_protocols_and_a_head(run_dir, tmp_path, capsys,
                                                           with_toy_head, sample):
    path = tmp_path / "both.json"
    status = main(["evaluate", "--checkpoint", str(run_dir), "--data", "fashion-mnist-sample",
                   "--protocol", "knn,clusters", "--labels-per-class", "1", "--seeds", "1",
                   "--cluster-restarts", "1", "--baselines", "none", "--json", str(path)])
    out = capsys.readouterr().out
    assert status == 0
    assert "1/class" in out and "head brightness" in out
    results = Results.from_json(path.read_text())
    assert Results.from_json(results.to_json()).to_json() == results.to_json()
    assert [c.protocol for c in results.cells] == ["knn"]
    head = results.clusters.row("simclr", "head brightness")
    assert head.num_clusters == 3 and head.seeds == []
    info = load_pretrained(run_dir).data
    expected = cluster_scores(_brightness_clusters(sample.test.images, info.mean, info.std),
                              sample.test.labels, num_clusters=3)
    assert head.scores == [expected]


def test_clusters_draws_the_nearest_images_of_each_kmeans_cluster(run_dir, tmp_path, sample):
    out = tmp_path / "grid.png"
    picture = clusters_command.run(parse([
        "clusters", "--checkpoint", str(run_dir), "--data", "fashion-mnist-sample",
        "--out", str(out), "--part", "test", "--clusters", "4", "--per-cluster", "3"]))
    assert picture.clusters_from == "k-means" and picture.num_clusters == 4
    assert len(picture.rows) == 4
    with Image.open(out) as image:
        assert image.size == grid_pixel_size(4, 3, 28)
        pixels = torch.from_numpy(np.asarray(image.convert("L")).copy())
    tile = 2 * 28 + GAP
    assert image.size == (CAPTION_WIDTH + 3 * tile, TITLE_HEIGHT + 4 * tile)
    # rows largest first; every image of the picture is among its cluster's nearest
    sizes = [row.size for row in picture.rows]
    assert sizes == sorted(sizes, reverse=True) and sum(sizes) == len(sample.test)
    for row_number, row in enumerate(picture.rows):
        members = (picture.assignments == row.cluster).nonzero().flatten()
        distances = (picture.features[members] - picture.centres[row.cluster]).pow(2).sum(1)
        assert list(row.indices) == members[distances.argsort()[:3]].tolist()
        assert row.caption.endswith(tuple(sample.test.class_names))
        # the first image of the row is drawn where it belongs, enlarged twice
        top, left = TITLE_HEIGHT + row_number * tile, CAPTION_WIDTH
        drawn = pixels[top + 4:top + 52, left + 4:left + 52].float()
        original = sample.test.images[row.indices[0], 0].repeat_interleave(2, 0)
        original = original.repeat_interleave(2, 1)[4:52, 4:52].float()
        assert (drawn - original).abs().mean() < 8


def test_clusters_uses_the_methods_head(run_dir, tmp_path, with_toy_head, sample):
    picture = clusters_command.run(parse([
        "clusters", "--checkpoint", str(run_dir), "--data", "fashion-mnist-sample",
        "--out", str(tmp_path / "head.png"), "--per-cluster", "2"]))
    assert picture.clusters_from == "head brightness" and picture.num_clusters == 3
    info = load_pretrained(run_dir).data
    expected = _brightness_clusters(sample.train.images, info.mean, info.std)
    assert torch.equal(picture.assignments, expected)
    chosen = choose_rows(picture.features, expected, picture.centres, per_cluster=2)
    assert [(r.cluster, r.size, r.indices) for r in picture.rows] == [
        (r.cluster, r.size, r.indices) for r in chosen]
    # the centre of a head's cluster is the mean of its images' features
    for row in picture.rows:
        torch.testing.assert_close(picture.centres[row.cluster],
                                   picture.features[expected == row.cluster].mean(0))


def test_choose_rows_on_a_small_case():
    features = torch.tensor([[0.0], [1.0], [5.0], [2.0], [9.0], [10.0]])
    assignments = torch.tensor([0, 0, 2, 0, 2, 2])
    centres = torch.tensor([[0.9], [100.0], [9.6]])
    rows = choose_rows(features, assignments, centres, per_cluster=2)
    # cluster 1 is empty and has no row; clusters of 3 each, ties by id
    assert [(r.cluster, r.size, r.indices) for r in rows] == [(0, 3, (1, 0)), (2, 3, (5, 4))]
    assert choose_rows(features, assignments, centres, per_cluster=5, max_rows=1)[0].indices \
        == (1, 0, 3)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--head", "nope"], "no cluster head 'nope'"),
        (["--clusters", "2", "--head", "brightness"], "give one of them"),
        (["--out", "grid.jpg"], "should be a .png file"),
        (["--clusters", "100000"], "give a smaller --clusters"),
        (["--per-cluster", "0"], "out of range"),
    ],
)
def test_clusters_bad_input(run_dir, tmp_path, capsys, with_toy_head, arguments, message):
    out = [] if "--out" in arguments else ["--out", str(tmp_path / "grid.png")]
    command = ["clusters", "--checkpoint", str(run_dir), "--data", "fashion-mnist-sample",
               *out, *arguments]
    assert main(command) == 2
    error = capsys.readouterr().err
    last = error.strip().splitlines()[-1]
    assert last.startswith("fewlabels: error:") and message in last
    assert "Traceback" not in error


def test_evaluate_plot_needs_a_label_protocol(run_dir, tmp_path, capsys):
    assert main(["evaluate", "--checkpoint", str(run_dir), "--protocol", "clusters",
                 "--plot", str(tmp_path / "p.png")]) == 2
    assert "add knn, linear, finetune or semi" in capsys.readouterr().err


class ModeRecordingHead(nn.Module):
    """Scores by brightness, recording the mode it ran in and how many images it saw."""

    def __init__(self) -> None:
        super().__init__()
        self.modes: list[bool] = []
        self.images_seen = 0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.modes.append(self.training)
        self.images_seen += len(images)
        return BrightnessHead()(images)


def test_head_clusters_run_in_eval_mode_in_batches_and_are_cached(tmp_path, sample):
    head = ModeRecordingHead().train()
    images = sample.test.subset(torch.arange(100))
    provider = HeadClusters(head, [0.3], [0.35], cache=FeatureCache(tmp_path), batch_size=32,
                            cache_key={"run": "toy"})
    assignments, clusters = provider(images, "test")
    assert clusters == 3 and assignments.dtype == torch.int64
    assert torch.equal(assignments, _brightness_clusters(images.images, [0.3], [0.35]))
    assert head.modes == [False] * 5 and head.training  # 1 image for K, then 4 batches
    again, _ = provider(images, "test")
    assert torch.equal(again, assignments) and head.images_seen == 1 + 100 + 1  # from the cache
