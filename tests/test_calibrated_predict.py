"""Calibrated confidences for `fewlabels predict`: labels held out of a classifier run
(`semi --calibration-per-class N`, counted in its budget, never trained on, not even as
unlabeled images), the temperature fitted on them after training and kept in the checkpoint,
and predict's confidences ``softmax(logits / T)``."""

import csv
import json

import numpy as np
import pytest
import torch

from fewlabels.calibration import (
    confidence_calibration_error,
    expected_calibration_error,
    fit_temperature,
)
from fewlabels.cli import main
from fewlabels.data.imageset import ImageSet
from fewlabels.engine.checkpoint import load_checkpoint
from fewlabels.runs import load_method
from fewlabels.semi.classifier_run import split_spec, streams

CLASSES = 3
PER_CLASS = 8


def _npz(path):
    """24 train images (8 a class, brightness tells the class, with noise) and 9 test images."""
    generator = torch.Generator().manual_seed(0)

    def images(labels):
        base = 50 + 70 * labels.float()[:, None, None]
        noise = 40 * torch.randn(len(labels), 8, 8, generator=generator)
        return (base + noise).clamp(0, 255).to(torch.uint8)

    y_train = torch.arange(CLASSES).repeat_interleave(PER_CLASS)
    y_test = torch.arange(CLASSES).repeat(3)
    np.savez(path, x_train=images(y_train).numpy(), y_train=y_train.numpy(),
             x_test=images(y_test).numpy(), y_test=y_test.numpy())
    return f"npz:{path}"


@pytest.fixture(scope="module")
def calibrated_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("calibrated")
    data = _npz(base / "data.npz")
    run = base / "run"
    assert main(["semi", "--method", "supervised", "--labels-per-class", "2",
                 "--calibration-per-class", "3", "--data", data, "--width", "4", "--depth", "2",
                 "--epochs", "3", "--batch-size", "6", "--ema-decay", "0.5", "--no-progress",
                 "--out", str(run)]) == 0
    return run, data


def test_held_out_labels_are_disjoint_counted_and_kept_out_of_both_streams():
    labels = torch.arange(CLASSES).repeat_interleave(PER_CLASS)
    split = split_spec(labels, 2, seed=4, calibration_per_class=3)
    labeled = torch.tensor(split["labeled_indices"])
    held_out = torch.tensor(split["calibration_indices"])
    assert torch.bincount(labels[labeled]).tolist() == [2] * CLASSES
    assert torch.bincount(labels[held_out]).tolist() == [3] * CLASSES
    assert not set(labeled.tolist()) & set(held_out.tolist())
    # the held-out part depends on the seed alone, not on the labels per class
    assert split_spec(labels, 4, seed=4, calibration_per_class=3)["calibration_indices"] == \
        split["calibration_indices"]
    train = ImageSet(torch.arange(len(labels), dtype=torch.uint8)[:, None, None, None]
                     .expand(-1, 1, 2, 2).contiguous(), labels)
    pool, stream = streams(train, split, unlabeled_ratio=1)
    in_pool = set(pool[:, 0, 0, 0].tolist())
    assert in_pool == set(range(len(labels))) - set(held_out.tolist())
    assert torch.equal(stream.hidden_labels, labels[pool[:, 0, 0, 0].long()])
    assert not set(stream.images[:, 0, 0, 0].tolist()) & set(held_out.tolist())
    # with a cap on the unlabeled images, still none of the held-out ones
    capped, _ = streams(train, split, unlabeled_ratio=1, max_unlabeled=10)
    assert len(capped) == 10 and not set(capped[:, 0, 0, 0].tolist()) & set(held_out.tolist())
    # no held-out part: the whole train part, as before
    assert streams(train, split_spec(labels, 2, seed=4), 1)[0] is train.images


def _logits(run, images):
    method, _ = load_method(run)
    mean = torch.tensor(method.data.mean)[:, None, None]
    std = torch.tensor(method.data.std)[:, None, None]
    with torch.no_grad():
        return method.classifier_network().eval()((images.float() / 255 - mean) / std)


def test_the_temperature_is_fitted_on_the_held_out_images_and_kept_in_the_run(calibrated_run):
    run, data = calibrated_run
    spec = load_checkpoint(run)["run"]
    calibration = spec["calibration"]
    stored = np.load(data.removeprefix("npz:"))
    held_out = torch.tensor(spec["split"]["calibration_indices"])
    images = torch.from_numpy(stored["x_train"])[held_out][:, None]
    labels = torch.from_numpy(stored["y_train"])[held_out]
    assert calibration["images"] == 9
    assert calibration["temperature"] == pytest.approx(
        fit_temperature(_logits(run, images), labels), rel=1e-4)
    assert calibration["nll_after"] <= calibration["nll_before"] + 1e-9
    assert json.loads((run / "run.json").read_text())["run"]["calibration"] == calibration
    result = json.loads((run / "result.json").read_text())
    assert result["label_budget"] == 6 + 9 and result["labeled"] == 6
    x_test = torch.from_numpy(stored["x_test"])[:, None]
    y_test = torch.from_numpy(stored["y_test"])
    test_logits = _logits(run, x_test)
    assert result["test_expected_calibration_error"] == pytest.approx(
        expected_calibration_error(test_logits.softmax(1), y_test), abs=1e-5)
    assert result["calibration"]["test_expected_calibration_error"] == pytest.approx(
        expected_calibration_error((test_logits / calibration["temperature"]).softmax(1),
                                   y_test), abs=1e-5)


def _confidences(path):
    with open(path, encoding="utf-8", newline="") as stream:
        return torch.tensor([float(row["confidence"]) for row in csv.DictReader(stream)])


def test_predict_writes_the_calibrated_softmax_and_says_so(calibrated_run, tmp_path, capsys):
    run, data = calibrated_run
    temperature = load_checkpoint(run)["run"]["calibration"]["temperature"]
    assert temperature != pytest.approx(1.0)
    x_test = torch.from_numpy(np.load(data.removeprefix("npz:"))["x_test"])[:, None]
    logits = _logits(run, x_test)
    capsys.readouterr()
    assert main(["predict", "--checkpoint", str(run), "--part", "test",
                 "--out", str(tmp_path / "calibrated.csv")]) == 0
    assert f"temperature {temperature:.3g} fitted on 9 held-out labels" in capsys.readouterr().out
    assert torch.allclose(_confidences(tmp_path / "calibrated.csv"),
                          (logits / temperature).softmax(1).max(1).values, atol=1e-6)
    assert main(["predict", "--checkpoint", str(run), "--part", "test", "--uncalibrated",
                 "--out", str(tmp_path / "plain.csv")]) == 0
    assert "--uncalibrated" in capsys.readouterr().out
    assert torch.allclose(_confidences(tmp_path / "plain.csv"),
                          logits.softmax(1).max(1).values, atol=1e-6)


def test_resuming_with_another_held_out_count_is_refused(calibrated_run, capsys):
    run, _ = calibrated_run
    capsys.readouterr()
    assert main(["semi", "--out", str(run), "--resume", "--calibration-per-class", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--calibration-per-class 3" in err and len(err.splitlines()) == 1


def test_confidence_calibration_error_by_hand():
    # bins of width 0.5: (0, .5] holds 0.4 (right); (.5, 1] holds 0.8 (wrong) and 0.9 (right)
    confidences = torch.tensor([0.4, 0.8, 0.9])
    right = torch.tensor([True, False, True])
    expected = (1 / 3) * abs(1 - 0.4) + (2 / 3) * abs(0.5 - 0.85)
    assert confidence_calibration_error(confidences, right, bins=2) == pytest.approx(expected)
    probabilities = torch.tensor([[0.4, 0.3, 0.3], [0.8, 0.1, 0.1], [0.05, 0.9, 0.05]])
    assert expected_calibration_error(probabilities, torch.tensor([0, 1, 1]), bins=2) == \
        pytest.approx(expected)
