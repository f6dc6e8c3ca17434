"""The classic semi-supervised methods: Pseudo-Label, entropy minimisation, Pi-model, Mean
Teacher and VAT. Each unlabeled loss against a hand-derived value, the ramp-ups at their ends
and midpoints, Pseudo-Label's mask, Mean Teacher's teacher being the moving average, VAT's
perturbation norm and untouched batch-norm statistics, hidden labels unused, and one tiny
run of each through the CLI."""

import copy
import json
import math

import pytest
import torch
from torch import nn

import fewlabels.losses.consistency as consistency
from fewlabels.cli import main
from fewlabels.engine.schedule import TrainingClock
from fewlabels.errors import UserError
from fewlabels.methods.base import Batch, DataInfo, StepInfo
from fewlabels.models import build_backbone
from fewlabels.semi import SEMI_METHODS, ClassifierNetwork
from fewlabels.semi.pi_model import GaussianRamp
from fewlabels.semi.pseudo_label import LinearRamp

METHODS = ["pseudo-label", "entropy-minimization", "pi-model", "mean-teacher", "vat"]
DATA = DataInfo(1, 16, (0.5,), (0.25,), num_classes=3, num_images=40)


def _method(name: str, **options):
    torch.manual_seed(0)
    method_class = SEMI_METHODS.get(name)
    backbone = build_backbone("convnet", in_channels=1, image_size=16, width=4, depth=2)
    return method_class(backbone, method_class.Config(**options), DATA)


def _batch(labeled: int = 4, unlabeled: int = 8) -> Batch:
    generator = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (labeled + unlabeled, 1, 16, 16), generator=generator,
                           dtype=torch.uint8)
    return Batch(unlabeled=images[labeled:], indices=torch.arange(unlabeled),
                 labeled=images[:labeled], labels=torch.arange(labeled) % 3,
                 labeled_indices=torch.arange(labeled),
                 hidden_labels=torch.arange(unlabeled) % 3)


def _step(method, progress: float = 0.5, seed: int = 2, step: int = 10) -> StepInfo:
    values = {name: schedule.value(step, progress) for name, schedule in
              method.schedules().items()}
    return StepInfo(step, 0, progress, torch.Generator().manual_seed(seed), 1, values)


def _logits_of(probabilities: list[list[float]]) -> torch.Tensor:
    return torch.tensor(probabilities, dtype=torch.float64).log().requires_grad_(True)


# Pseudo-Label. ------------------------------------------------------------------------------


def test_pseudo_label_mask_counts_exactly_the_images_above_the_threshold():
    logits = _logits_of([[0.97, 0.02, 0.01], [0.94, 0.03, 0.03], [0.5, 0.25, 0.25],
                         [0.01, 0.96, 0.03], [0.2, 0.1, 0.7]])
    for threshold, expected in [(0.95, [1, 0, 0, 1, 0]), (0.9, [1, 1, 0, 1, 0]),
                                (0.6, [1, 1, 0, 1, 1]), (0.0, [1, 1, 1, 1, 1]),
                                (0.99, [0, 0, 0, 0, 0])]:
        method = _method("pseudo-label", threshold=threshold)
        _, pseudo_labels, mask = method.unlabeled_loss(logits)
        assert mask.tolist() == [bool(m) for m in expected], threshold
        assert pseudo_labels.tolist() == [0, 0, 0, 1, 2]


def test_pseudo_label_loss_is_the_masked_cross_entropy_against_its_own_argmax():
    probabilities = [[0.97, 0.02, 0.01], [0.5, 0.25, 0.25], [0.01, 0.96, 0.03]]
    logits = _logits_of(probabilities)
    loss, _, mask = _method("pseudo-label", threshold=0.95).unlabeled_loss(logits)
    # Rows 0 and 2 are confident; the mean is over all 3 rows (FixMatch's 1/(mu B)).
    assert loss.item() == pytest.approx(-(math.log(0.97) + math.log(0.96)) / 3, rel=1e-6)
    loss.backward()
    # No gradient through the target: d/dz CE(z, argmax) = (softmax(z) - onehot) m / U.
    expected = torch.tensor(probabilities, dtype=torch.float64)
    expected[0, 0] -= 1
    expected[2, 1] -= 1
    expected[1] = 0
    assert torch.allclose(logits.grad, expected / 3)
    every, _, mask = _method("pseudo-label", threshold=0.0).unlabeled_loss(_logits_of(
        probabilities))
    assert mask.all()  # threshold 0: Lee's rule, every image
    assert every.item() == pytest.approx(-(math.log(0.97) + math.log(0.5) + math.log(0.96)) / 3)


def test_pseudo_label_weight_ramp_follows_lee_from_t1_to_t2():
    method = _method("pseudo-label", unlabeled_weight=3.0, ramp_start=0.2, ramp_end=0.6)
    ramp = method.schedules()["unlabeled_weight"]
    assert ramp == LinearRamp(3.0, 0.2, 0.6)
    assert ramp.value(0, 0.0) == 0.0
    assert ramp.value(0, 0.2) == 0.0  # T1: still 0
    assert ramp.value(0, 0.4) == pytest.approx(1.5)  # halfway from T1 to T2
    assert ramp.value(0, 0.5) == pytest.approx(2.25)  # midpoint of training
    assert ramp.value(0, 0.6) == 3.0  # T2: alpha_f
    assert ramp.value(0, 1.0) == 3.0
    clock = TrainingClock(steps_per_epoch=10, total_steps=101)  # the engine's evaluation
    clock.advance(40, 0.0)
    assert clock.value(ramp) == pytest.approx(1.5)
    assert LinearRamp(3.0, 0.0, 0.0).value(0, 0.0) == 3.0  # no ramp
    for options in ({"threshold": 1.5}, {"ramp_start": 0.5, "ramp_end": 0.4},
                    {"unlabeled_ratio": 0}):
        with pytest.raises(UserError):
            _method("pseudo-label", **options)


# Entropy minimisation. ----------------------------------------------------------------------


def test_entropy_minimization_loss_is_the_mean_entropy():
    logits = _logits_of([[1 / 3, 1 / 3, 1 / 3], [0.5, 0.25, 0.25]])
    loss = SEMI_METHODS.get("entropy-minimization").unlabeled_loss(logits)
    assert loss.item() == pytest.approx((math.log(3) + 1.5 * math.log(2)) / 2, rel=1e-6)


# Pi-model and Mean Teacher. -----------------------------------------------------------------


def test_pi_model_loss_is_the_squared_softmax_difference_with_gradient_into_both_views():
    first = _logits_of([[1 / 3, 1 / 3, 1 / 3], [0.5, 0.25, 0.25]])
    second = _logits_of([[0.5, 0.25, 0.25], [0.5, 0.25, 0.25]])
    loss = SEMI_METHODS.get("pi-model").unlabeled_loss(first, second)
    # Row 0: (1/6)^2 + 2 (1/12)^2 = 1/24, over 3 classes; row 1: 0; mean over 2 rows.
    assert loss.item() == pytest.approx(1 / 24 / 3 / 2, rel=1e-6)
    loss.backward()
    assert first.grad.abs().sum() > 0 and second.grad.abs().sum() > 0


def test_mean_teacher_loss_is_the_same_difference_with_the_teacher_detached():
    student = _logits_of([[1 / 3, 1 / 3, 1 / 3]])
    teacher = _logits_of([[0.5, 0.25, 0.25]])
    loss = SEMI_METHODS.get("mean-teacher").unlabeled_loss(student, teacher)
    assert loss.item() == pytest.approx(1 / 24 / 3, rel=1e-6)
    loss.backward()
    assert student.grad.abs().sum() > 0 and teacher.grad is None


@pytest.mark.parametrize("name", ["pi-model", "mean-teacher"])
def test_consistency_weight_follows_the_gaussian_ramp(name):
    method = _method(name, unlabeled_weight=10.0, rampup_fraction=0.4)
    ramp = method.schedules()["unlabeled_weight"]
    assert ramp == GaussianRamp(10.0, 0.4)
    assert ramp.value(0, 0.0) == pytest.approx(10 * math.exp(-5))
    assert ramp.value(0, 0.2) == pytest.approx(10 * math.exp(-5 * 0.25))  # ramp's midpoint
    assert ramp.value(0, 0.5) == 10.0  # training's midpoint: ramped up
    assert ramp.value(0, 1.0) == 10.0
    assert GaussianRamp(10.0, 0.0).value(0, 0.0) == 10.0  # no ramp-up


def test_mean_teachers_teacher_is_the_moving_average_of_the_student():
    method = _method("mean-teacher", ema_decay=0.9, input_noise=0.0)
    assert method.teacher is method.average
    before = {k: v.clone() for k, v in method.average.state_dict().items()}
    with torch.no_grad():
        for parameter in method.parameters():
            if parameter.requires_grad:
                parameter.add_(0.3 * torch.randn_like(parameter))
    method.after_optimizer_step(_step(method, step=1000))  # past any warm-up of the decay
    student = ClassifierNetwork(method.backbone, method.classifier).state_dict()
    formula = copy.deepcopy(ClassifierNetwork(method.backbone, method.classifier))
    formula.load_state_dict({
        name: value if name.endswith(("running_mean", "running_var", "num_batches_tracked"))
        else 0.9 * before[name] + 0.1 * value for name, value in student.items()})
    inputs = method.make_views(_batch(), torch.Generator().manual_seed(3))
    losses = method.training_loss(inputs, _step(method))
    with torch.no_grad():
        _, student_logits = method.logits_of(inputs.labeled, inputs.first)
        expected = method.unlabeled_loss(student_logits, formula(inputs.second))
    assert losses["unlabeled_loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert not torch.equal(inputs.first, inputs.second)  # two views


# VAT. ---------------------------------------------------------------------------------------


class _Pixels(nn.Flatten):
    """A backbone whose features are the pixels, so the classifier is a linear model."""

    feature_dim = 4


def _linear_vat(epsilon: float):
    data = DataInfo(1, 2, (0.0,), (1.0,), num_classes=2, num_images=4)
    method_class = SEMI_METHODS.get("vat")
    method = method_class(_Pixels(), method_class.Config(epsilon=epsilon), data).double()
    w = torch.tensor([1.0, 2.0, 0.0, 0.0], dtype=torch.float64)
    with torch.no_grad():
        method.classifier.weight.copy_(torch.stack([w, -w]))
        method.classifier.bias.zero_()
    return method


def test_vat_loss_on_a_linear_model_equals_the_hand_derived_value():
    # Logits (w.x, -w.x) with w.x = 0: p = (1/2, 1/2); the KL's Hessian is rank one along w,
    # so r_adv = +-eps w/|w|, a = eps |w|, and KL = -log 2 - (log s(2a) + log s(-2a)) / 2.
    epsilon = 0.5
    method = _linear_vat(epsilon)
    images = torch.tensor([[2.0, -1.0, 3.0, 5.0], [0.0, 0.0, 1.0, -1.0],
                           [-4.0, 2.0, 0.0, 7.0]], dtype=torch.float64).view(3, 1, 2, 2)
    logits = method.logits(images)
    assert torch.allclose(logits, torch.zeros_like(logits))
    loss = method.unlabeled_loss(images, logits, torch.Generator().manual_seed(0))
    a = epsilon * math.sqrt(5.0)
    sigmoid = 1 / (1 + math.exp(-2 * a))
    expected = -math.log(2) - (math.log(sigmoid) + math.log(1 - sigmoid)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_vat_perturbation_has_the_requested_norm_and_keeps_batch_norm_statistics(monkeypatch):
    perturbations = []
    original = consistency.vat_perturbation

    def recording(*args, **kwargs):
        perturbations.append(original(*args, **kwargs))
        return perturbations[-1]

    monkeypatch.setattr(consistency, "vat_perturbation", recording)
    method = _method("vat", epsilon=1.5)
    inputs = method.make_views(_batch(), torch.Generator().manual_seed(3))
    plain = copy.deepcopy(method)
    start = {k: v.clone() for k, v in method.backbone.state_dict().items()}
    losses = method.training_loss(inputs, _step(method))
    (r_adv,) = perturbations
    assert r_adv.shape == (12, 1, 16, 16)  # labeled and unlabeled images
    assert torch.allclose(r_adv.flatten(1).norm(dim=1), torch.full((12,), 1.5))
    assert losses["unlabeled_loss"] > 0
    with torch.no_grad():
        plain.logits_of(inputs.labeled, inputs.unlabeled)  # the ordinary forward alone
    after, expected = method.backbone.state_dict(), plain.backbone.state_dict()
    names = [n for n in after if n.endswith(("running_mean", "running_var", "batches_tracked"))]
    assert names and all(torch.equal(after[n], expected[n]) for n in names)
    assert not torch.equal(after[names[0]], start[names[0]])  # the clean pass did move them


# Every method. ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", METHODS)
def test_hidden_labels_leave_every_loss_unchanged(name):
    options = {"entropy_weight": 0.5} if name == "vat" else {}
    method = _method(name, **options)
    inputs = method.make_views(_batch(), torch.Generator().manual_seed(3))
    shuffled = inputs._replace(hidden_labels=inputs.hidden_labels.flip(0))
    first = copy.deepcopy(method).training_loss(inputs, _step(method))
    second = copy.deepcopy(method).training_loss(shuffled, _step(method))
    for key in ("loss", "supervised_loss", "unlabeled_loss", "labeled_accuracy"):
        assert torch.equal(first[key], second[key]), key
    assert "pseudo_label_rate" in first and "unlabeled_accuracy" in first
    weight = _step(method).values.get("unlabeled_weight", method.config.unlabeled_weight)
    total = first["supervised_loss"] + weight * first["unlabeled_loss"]
    if name == "vat":
        total = total + 0.5 * first["entropy"]
    assert first["loss"].item() == pytest.approx(total.item(), rel=1e-5)


@pytest.mark.parametrize("name", METHODS)
def test_a_tiny_run_through_the_cli(name, tmp_path):
    out = tmp_path / "run"
    assert main(["semi", "--method", name, "--labels-per-class", "2", "--max-unlabeled", "64",
                 "--epochs", "1", "--data", "fashion-mnist-sample", "--width", "4",
                 "--depth", "2", "--batch-size", "8", "--unlabeled-ratio", "2",
                 "--no-progress", "--out", str(out)]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["method"] == name and 0.0 <= result["test_accuracy"] <= 1.0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("pseudo_label_rate" in record for record in records)


def test_the_engine_makes_named_tuples_of_views_channels_last():
    from fewlabels.engine.trainer import _to_channels_last
    from fewlabels.semi.pseudo_label import WeakViews

    views = WeakViews(torch.zeros(2, 3, 4, 4), torch.zeros(2), torch.zeros(4, 3, 4, 4), None)
    moved = _to_channels_last(views)
    assert type(moved) is WeakViews and moved.hidden_labels is None
    assert moved.unlabeled.is_contiguous(memory_format=torch.channels_last)
