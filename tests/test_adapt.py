"""Domain adaptation: DANN (gradient reversal inside the method, its schedule, the domain
loss), momentum-teacher self-training (test-time-augmented pseudo-labels, adaptive
thresholds, teacher in eval mode), hidden target labels only logged, the gray -> RGB
conversion and joint normalisation, and `fewlabels adapt` end to end with its one-line
errors."""

import copy
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine_harness import compare_one_and_two_processes
from fewlabels.cli import main
from fewlabels.commands.adapt import joint_mean_std, matching_channels
from fewlabels.engine.checkpoint import load_checkpoint
from fewlabels.engine.schedule import TrainingClock
from fewlabels.methods.base import Batch, DataInfo, StepInfo
from fewlabels.models import build_backbone
from fewlabels.semi import SEMI_METHODS, test_time_augmentation
from fewlabels.semi.adaptive_teacher import TEACHER_VIEWS
from fewlabels.semi.dann import REVERSAL, ReversalSchedule, domain_classification_loss

SIDE, CLASSES = 16, 3


def _method(name, **options):
    data = DataInfo(3, SIDE, (0.5, 0.4, 0.3), (0.25, 0.2, 0.3), num_classes=CLASSES,
                    num_images=40)
    backbone = build_backbone("convnet", in_channels=3, image_size=SIDE, width=4, depth=2,
                              feature_dim=8)
    return SEMI_METHODS.get(name)(backbone, SEMI_METHODS.get(name).Config(**options), data)


def _step(**values):
    return StepInfo(0, 0, 0.0, torch.Generator().manual_seed(0), values=values)


# -- DANN ---------------------------------------------------------------------------------------


def test_the_reversal_schedule_is_2_over_1_plus_exp_minus_10p_minus_1():
    schedule = _method("dann", discriminator_hidden=(8,)).schedules()[REVERSAL]
    clock = TrainingClock(steps_per_epoch=3, total_steps=3)  # progress 0, 0.5, 1
    values = []
    for step in range(3):
        clock.advance(step, 0.0)
        values.append(clock.value(schedule))
    # 2 / (1 + exp(-10 p)) - 1 = tanh(5 p)
    assert values == pytest.approx([0.0, 0.9866142981514303, 0.9999092042625951], abs=1e-12)
    assert ReversalSchedule(0.3).value(7, 0.5, 0, 0.0) == pytest.approx(0.3 * math.tanh(2.5))
    assert ReversalSchedule(1.0).to_dict()["shape"] == "dann"


def test_the_domain_loss_on_a_hand_made_input():
    source, target = torch.tensor([0.0, math.log(3)]), torch.tensor([math.log(3)])
    # source: -log(1 - 1/2) = log 2, -log(1 - 3/4) = log 4; target: -log(3/4) = log 4/3
    expected = math.log(2 * 4 * 4 / 3) / 3
    assert float(domain_classification_loss(source, target)) == pytest.approx(expected)


def _gradients(module):
    return torch.cat([p.grad.flatten() if p.grad is not None else torch.zeros(p.numel())
                      for p in module.parameters()])


def test_the_reversal_inside_dann_negates_and_scales_the_discriminator_gradient():
    torch.manual_seed(0)
    method = _method("dann", discriminator_hidden=(8, 8)).double()
    source, target = torch.randn(4, 3, SIDE, SIDE).double(), torch.randn(4, 3, SIDE, SIDE).double()
    inputs = (source, torch.tensor([0, 1, 2, 0]), target, None)

    def run(coefficient):
        method.zero_grad(set_to_none=True)
        method.training_loss(inputs, _step(**{REVERSAL: coefficient}))["loss"].backward()
        return _gradients(method.backbone), _gradients(method.discriminator)

    backbone_half, discriminator_half = run(0.5)
    backbone_zero, discriminator_zero = run(0.0)  # the classifier's gradient alone
    method.zero_grad(set_to_none=True)  # the domain loss without any reversal
    logits = method.discriminator(method.backbone(torch.cat([source, target]))).squeeze(1)
    domain_classification_loss(logits[:4], logits[4:]).backward()
    backbone_plain, discriminator_plain = (_gradients(method.backbone),
                                           _gradients(method.discriminator))
    assert backbone_plain.abs().max() > 1e-4
    torch.testing.assert_close(backbone_half - backbone_zero, -0.5 * backbone_plain)
    torch.testing.assert_close(discriminator_half, discriminator_plain)  # not scaled
    torch.testing.assert_close(discriminator_zero, discriminator_plain)


def test_dann_never_trains_on_the_hidden_target_labels_and_logs_their_accuracy():
    torch.manual_seed(1)
    method = _method("dann", discriminator_hidden=(8,))
    source, target = torch.randn(4, 3, SIDE, SIDE), torch.randn(6, 3, SIDE, SIDE)
    hidden = torch.tensor([0, 1, 2, 2, 1, 0])
    step = _step(**{REVERSAL: 0.7})
    first = method.training_loss((source, torch.tensor([0, 1, 2, 0]), target, hidden), step)
    permuted = method.training_loss((source, torch.tensor([0, 1, 2, 0]), target,
                                     hidden[torch.tensor([5, 3, 1, 0, 2, 4])]), step)
    assert torch.equal(first["loss"], permuted["loss"])
    with torch.no_grad():
        predicted = method.logits(torch.cat([source, target]))[4:].argmax(1)
    assert float(first["unlabeled_accuracy"]) == pytest.approx(
        (predicted == hidden).float().mean().item())
    assert 0.0 <= float(first["domain_accuracy"]) <= 1.0


# -- momentum-teacher self-training -----------------------------------------------------------


def _teacher_batch(count=6):
    generator = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (4 + count, 3, SIDE, SIDE), dtype=torch.uint8,
                           generator=generator)
    return Batch(unlabeled=images[4:], indices=torch.arange(count) * 5,
                 labeled=images[:4], labels=torch.tensor([0, 1, 2, 1]),
                 hidden_labels=torch.zeros(count, dtype=torch.long))


def _averaged_by_hand(method, target, views):
    with torch.no_grad():
        return torch.stack([
            method.average(test_time_augmentation.test_time_view(target, name, 1)).softmax(1)
            for name in TEACHER_VIEWS[:views]]).mean(0)


def test_teacher_pseudo_labels_are_the_mean_of_the_views_and_the_loss_matches_by_hand():
    torch.manual_seed(2)
    method = _method("teacher-adapt", teacher_views=4, min_threshold=0.0)
    method.train()
    assert not method.average.training  # the teacher predicts in eval mode
    batch = _teacher_batch()
    source, labels, strong, target, indices, _ = method.make_views(
        batch, torch.Generator().manual_seed(0))
    averaged = _averaged_by_hand(method, target, 4)  # shift 1 px at 16 px
    confidence, pseudo = averaged.max(1)
    # Every pool image has been confident as the first image's class: that class's
    # threshold is tau (set to the median confidence), the others' 0.
    method.thresholds.predictions.fill_(int(pseudo[0]))
    method.thresholds.threshold = float(confidence.median())
    thresholds = method.thresholds.class_thresholds()
    numbers = method.training_loss((source, labels, strong, target, indices,
                                    averaged.argmax(1)), _step())
    source_logits, strong_logits = method.logits_of(source, strong)
    kept = confidence >= thresholds[pseudo]
    assert 0 < int(kept.sum()) < len(kept)  # the threshold keeps some, not all
    expected = F.cross_entropy(source_logits, labels) + (
        F.cross_entropy(strong_logits, pseudo, reduction="none") * kept).mean()
    assert float(numbers["loss"].detach()) == pytest.approx(float(expected.detach()), rel=1e-5)
    assert float(numbers["pseudo_label_rate"]) == pytest.approx(kept.float().mean().item())
    assert float(numbers["unlabeled_accuracy"]) == 1.0  # hidden = the teacher's own labels
    # a floor above every confidence keeps none
    floored = _method("teacher-adapt", teacher_views=4, min_threshold=1.0)
    floored.load_state_dict(method.state_dict())
    numbers = floored.training_loss((source, labels, strong, target, indices, pseudo), _step())
    assert float(numbers["pseudo_label_rate"]) == 0.0


def test_teacher_adapt_never_trains_on_the_hidden_target_labels_and_logs_their_accuracy():
    torch.manual_seed(4)
    method = _method("teacher-adapt", min_threshold=0.0)
    inputs = method.make_views(_teacher_batch(), torch.Generator().manual_seed(0))
    twin = copy.deepcopy(method)  # the thresholds change with each step
    pseudo = _averaged_by_hand(method, inputs[3], len(TEACHER_VIEWS)).argmax(1)
    right = method.training_loss((*inputs[:5], pseudo), _step())
    wrong = twin.training_loss((*inputs[:5], (pseudo + 1) % CLASSES), _step())
    assert torch.equal(right["loss"], wrong["loss"])
    assert float(right["pseudo_label_rate"]) == 1.0  # FlexMatch's warm-up: thresholds 0
    assert float(right["pseudo_label_accuracy"]) == 1.0
    assert float(wrong["pseudo_label_accuracy"]) == 0.0
    # the thresholds recorded the confident images by their pool indices
    confident = _averaged_by_hand(twin, inputs[3], 6).max(1).values >= 0.95
    recorded = method.thresholds.predictions[inputs[4]]
    assert torch.equal(recorded >= 0, confident)


@pytest.mark.slow
@pytest.mark.parametrize("name, options", [
    # a low threshold, no floor: images become confident and pseudo-labels train
    ("teacher-adapt", {"threshold": 0.4, "min_threshold": 0.0, "teacher_views": 3}),
    ("dann", {"discriminator_hidden": (8,)}),
])
def test_two_processes_adapt_as_one_does(tmp_path, name, options):
    single = compare_one_and_two_processes(
        tmp_path, name, {"unlabeled_ratio": 2, **options},
        {"name": "convnet", "width": 4, "depth": 2, "feature_dim": 8}, steps=3, batch_size=8,
        labeled=12, channels=3, atol=1e-4)
    if name == "teacher-adapt":  # the gathered thresholds' state is not trivial
        assert int((single["state"]["thresholds.predictions"] >= 0).sum()) > 0


# -- the two domains ------------------------------------------------------------------------


def test_gray_images_are_repeated_into_three_equal_channels():
    gray = torch.randint(0, 256, (5, 1, 4, 4), dtype=torch.uint8)
    colour = matching_channels(gray, 3)
    assert colour.dtype == torch.uint8 and colour.shape == (5, 3, 4, 4)
    for channel in range(3):
        assert torch.equal(colour[:, channel], gray[:, 0])
    already = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    assert matching_channels(already, 3) is already


def test_one_normalisation_over_both_domains_each_weighing_half():
    source = torch.randint(0, 256, (6, 3, 4, 4), dtype=torch.uint8)
    target = torch.randint(0, 100, (6, 3, 4, 4), dtype=torch.uint8)
    mean, std = joint_mean_std(source, target)
    pixels = torch.cat([source, target]).double().div(255).transpose(0, 1).flatten(1)
    assert mean == pytest.approx(pixels.mean(1).tolist())
    assert std == pytest.approx(pixels.std(1, unbiased=False).tolist())
    # a domain with more images weighs no more
    assert joint_mean_std(torch.cat([source, source]), target)[0] == pytest.approx(mean)


# -- fewlabels adapt ------------------------------------------------------------------------


def _write_domain(path, channels, side=SIDE, labels=True, seed=0):
    """Class c: a bright band at rows 4c..4c+3 over noise; colour domains tint it."""
    rng = np.random.default_rng(seed)

    def images(count):
        y = np.arange(count) % CLASSES
        x = rng.integers(0, 80, (count, side, side, channels))
        for image, label in zip(x, y, strict=True):
            image[4 * label:4 * label + 3] += 150
        return x.astype(np.uint8).squeeze(-1) if channels == 1 else x.astype(np.uint8), y

    x_train, y_train = images(48)
    x_test, y_test = images(15)
    arrays = {"x_train": x_train, "x_test": x_test, "y_test": y_test}
    if labels:
        arrays["y_train"] = y_train
    np.savez(path, **arrays)
    return f"npz:{path}"


SMALL = ["--width", "4", "--depth", "2", "--feature-dim", "8", "--batch-size", "8",
         "--no-progress"]


@pytest.mark.parametrize("method, options", [
    ("supervised", []),
    ("dann", ["--discriminator-hidden", "8"]),
    ("teacher-adapt", ["--teacher-views", "2", "--min-threshold", "0"]),
])
def test_adapt_end_to_end_on_tiny_gray_source_and_colour_target(tmp_path, method, options):
    source = _write_domain(tmp_path / "source.npz", channels=1)
    target = _write_domain(tmp_path / "target.npz", channels=3, seed=1)
    out = tmp_path / "run"
    assert main(["adapt", "--method", method, "--source", source, "--target", target,
                 "--out", str(out), "--epochs", "1", *SMALL, *options]) == 0
    result = json.loads((out / "result.json").read_text())
    assert 0.0 <= result["target_test_accuracy"] <= 1.0
    assert result["test_accuracy"] == result["target_test_accuracy"]
    assert 0.0 <= result["source_test_accuracy"] <= 1.0
    assert result["target_test_images"] == result["source_test_images"] == 15
    spec = load_checkpoint(out)["run"]
    assert spec["data"]["info"]["channels"] == 3 and spec["adapt"]["gray_to_colour"]
    assert spec["data"]["info"]["num_images"] == 48
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    logged = set().union(*records)
    if method == "dann":
        assert {"unlabeled_accuracy", "domain_loss", REVERSAL} <= logged
    if method == "teacher-adapt":
        assert {"pseudo_label_rate", "pseudo_label_accuracy"} <= logged


def test_adapt_resumes_to_the_weights_of_an_uninterrupted_run(tmp_path):
    source = _write_domain(tmp_path / "source.npz", channels=1)
    target = _write_domain(tmp_path / "target.npz", channels=3, seed=1)
    common = ["adapt", "--method", "dann", "--source", source, "--target", target,
              "--epochs", "1", "--max-unlabeled", "40", "--discriminator-hidden", "8", *SMALL]
    assert main([*common, "--out", str(tmp_path / "whole")]) == 0
    assert main([*common, "--out", str(tmp_path / "split"), "--stop-after-steps", "2"]) == 130
    assert main(["adapt", "--out", str(tmp_path / "split"), "--resume", "--no-progress"]) == 0
    whole, resumed = load_checkpoint(tmp_path / "whole"), load_checkpoint(tmp_path / "split")
    assert whole["step"] == resumed["step"] == 5  # 40 target images / 8
    for name, value in whole["model"].items():
        assert torch.equal(value, resumed["model"][name]), name


@pytest.mark.parametrize("case, message", [
    ("unlabeled source", "has no labels; the source domain must be labeled"),
    ("sizes", "pass --image-size N"),
    ("not a classifier", "simclr is not a classifier method"),
])
def test_adapt_errors_are_one_line(tmp_path, capsys, case, message):
    source = _write_domain(tmp_path / "source.npz", channels=1,
                           labels=case != "unlabeled source")
    target = _write_domain(tmp_path / "target.npz", channels=3,
                           side=20 if case == "sizes" else SIDE)
    method = "simclr" if case == "not a classifier" else "dann"
    assert main(["adapt", "--method", method, "--source", source, "--target", target,
                 "--out", str(tmp_path / "run"), *SMALL]) == 2
    error = capsys.readouterr().err
    assert message in error and len(error.strip().splitlines()) == 1
