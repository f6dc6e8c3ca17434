"""Self-training rounds (Noisy Student, Naive Student) and co-training: test-time-augmented
probabilities against a by-hand mean over views, the teacher's pseudo-labels in buffers,
confidence and per-class selection, the exchange of confident labels between two networks,
hidden labels unused, a run resumed within a round, and runs through the CLI."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fewlabels.cli import main
from fewlabels.engine.checkpoint import load_checkpoint
from fewlabels.methods.base import Batch, DataInfo, EpochContext, StepInfo
from fewlabels.models import build_backbone
from fewlabels.semi import SEMI_METHODS
from fewlabels.semi.base import ClassifierNetwork
from fewlabels.semi.co_training import CoTraining
from fewlabels.semi.self_training import (
    average_is_ready,
    pseudo_label_loss,
    select_pseudo_labels,
    shuffle_entries_,
)
from fewlabels.semi.test_time_augmentation import augmented_probabilities

MEAN, STD = (0.5,), (0.25,)
SMALL = ["--labels-per-class", "2", "--max-unlabeled", "32", "--data", "fashion-mnist-sample",
         "--width", "4", "--depth", "2", "--batch-size", "8", "--unlabeled-ratio", "2",
         "--no-progress"]


# -- test-time augmentation ------------------------------------------------------------------


def test_test_time_probabilities_are_the_mean_of_the_per_view_softmax_computed_by_hand():
    torch.manual_seed(0)
    network = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    images = torch.randint(0, 256, (5, 1, 4, 4), dtype=torch.uint8)
    x = (images.float() / 255 - 0.5) / 0.25
    # Each view by hand: which source row/column every output pixel reads (shift 1, the
    # border reflected: a right shift reads columns 1,0,1,2).
    right, left = [1, 0, 1, 2], [1, 2, 3, 2]
    views = [x, x[..., [3, 2, 1, 0]], x[..., right], x[..., left], x[:, :, right],
             x[:, :, left]]  # identity, flip, right, left, down, up
    with torch.no_grad():
        by_hand = sum(network(view).softmax(dim=1) for view in views) / 6
    got = augmented_probabilities(network, images, MEAN, STD, views="flip-and-shifts",
                                  shift=1, batch_size=2)
    assert torch.allclose(got, by_hand, atol=1e-6)
    assert network.training  # its mode is restored
    flips = augmented_probabilities(network, images, MEAN, STD, views="flip", batch_size=3)
    with torch.no_grad():
        expected = (network(views[0]).softmax(1) + network(views[1]).softmax(1)) / 2
    assert torch.allclose(flips, expected, atol=1e-6)


# -- selection -------------------------------------------------------------------------------


def test_confidence_selection_keeps_exactly_the_images_at_or_above_the_threshold():
    probabilities = torch.tensor([[0.5, 0.3, 0.2], [0.49, 0.5, 0.01], [0.2, 0.3, 0.5],
                                  [0.34, 0.33, 0.33], [0.1, 0.1, 0.8]])
    keep = select_pseudo_labels(probabilities, threshold=0.5)
    assert keep.tolist() == [True, True, True, False, True]
    assert select_pseudo_labels(probabilities, threshold=0.0).all()


def test_per_class_top_k_keeps_at_most_k_per_class_the_most_confident():
    confidence = torch.tensor([0.9, 0.6, 0.8, 0.7, 0.95, 0.5, 0.4, 0.65, 0.3])
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2, 2])
    probabilities = torch.full((9, 3), 0.0)
    probabilities[torch.arange(9), labels] = confidence
    probabilities[torch.arange(9), (labels + 1) % 3] = 1 - confidence
    keep = select_pseudo_labels(probabilities, threshold=0.45, top_per_class=2)
    # class 0: 0.9 and 0.8 of four; class 1: both; class 2: 0.65 (0.4 and 0.3 are below)
    assert torch.nonzero(keep).squeeze(1).tolist() == [0, 2, 4, 5, 7]


# -- Noisy / Naive Student -------------------------------------------------------------------


def _method(name: str, num_images: int = 12, **options):
    data = DataInfo(1, 28, MEAN, STD, num_classes=3, num_images=num_images)
    backbone = build_backbone("convnet", in_channels=1, image_size=28, width=4, depth=2)
    return SEMI_METHODS.get(name)(backbone, SEMI_METHODS.get(name).Config(**options), data)


def _context(images: torch.Tensor, progress: float, epoch: int = 1,
             step: int = 10_000) -> EpochContext:
    return EpochContext(epoch=epoch, step=step, steps_per_epoch=1, images=images, mean=MEAN,
                        std=STD, generator=torch.Generator().manual_seed(epoch),
                        _reset_optimizer_state=lambda parameters: None, progress=progress)


def _confident(network: ClassifierNetwork, scale: float) -> None:
    with torch.no_grad():
        network.classifier.weight.normal_(0.0, scale)


@pytest.mark.parametrize("name", ["noisy-student", "naive-student"])
def test_the_teachers_pseudo_labels_are_the_test_time_arg_max_of_the_moving_average(name):
    torch.manual_seed(1)
    method = _method(name, threshold=0.5, top_per_class=3)
    _confident(method.average, 3.0)  # the average differs from the trained weights
    images = torch.randint(0, 256, (12, 1, 28, 28), dtype=torch.uint8)
    assert method.on_epoch_start(_context(images, progress=0.2)) is None  # round 0
    assert not method.kept.any()
    numbers = method.on_epoch_start(_context(images, progress=0.4))  # round 1 of 3
    expected = augmented_probabilities(method.average, images, MEAN, STD)
    assert torch.equal(method.targets.argmax(1), expected.argmax(1))
    if name == "noisy-student":  # soft targets: the probabilities themselves
        assert torch.allclose(method.targets, expected, atol=1e-6)
    else:  # hard targets
        assert torch.equal(method.targets, F.one_hot(expected.argmax(1), 3).float())
    assert torch.equal(method.kept, select_pseudo_labels(expected, 0.5, 3))
    assert numbers["round"] == 1 and numbers["pseudo_labeled"] == method.kept.sum()
    student = ClassifierNetwork(method.backbone, method.classifier)
    assert not torch.allclose(augmented_probabilities(student, images, MEAN, STD), expected)
    before = method.targets.clone()
    _confident(method.average, 5.0)
    assert method.on_epoch_start(_context(images, progress=0.6)) is None  # still round 1
    assert torch.equal(method.targets, before)


def test_a_moving_average_younger_than_three_time_constants_leaves_the_teaching_to_the_weights():
    assert average_is_ready(_method("naive-student", ema_decay=0.999), 0, 40)  # the warm-up
    torch.manual_seed(3)
    method = _method("naive-student", ema_decay=0.99, threshold=0.0)
    with torch.no_grad():  # the trained weights say class 0, the average class 2
        method.classifier.bias.copy_(torch.tensor([50.0, 0.0, 0.0]))
        method.average.classifier.bias.copy_(torch.tensor([0.0, 0.0, 50.0]))
    images = torch.randint(0, 256, (12, 1, 28, 28), dtype=torch.uint8)
    method.average_since.fill_(1000)  # a new student's reset, past the average's warm-up
    numbers = method.on_epoch_start(_context(images, progress=0.4, step=1298))  # 0.99^298
    student = ClassifierNetwork(method.backbone, method.classifier)
    from_student = augmented_probabilities(student, images, MEAN, STD).argmax(1)
    assert numbers["teacher_is_average"] == 0
    assert torch.equal(method.targets.argmax(1), from_student) and (from_student == 0).all()
    numbers = method.on_epoch_start(_context(images, progress=0.7, step=1299))  # 0.99^299
    assert numbers["teacher_is_average"] == 1
    assert (method.targets.argmax(1) == 2).all()


def test_the_student_loss_is_labeled_plus_pseudo_labeled_cross_entropy_by_hand():
    assert math.isclose(float(pseudo_label_loss(torch.tensor([[1.0, 2.0, 0.0]]),
                                                torch.tensor([[0.2, 0.5, 0.3]]))),
                        -(0.2 * (1 - _lse()) + 0.5 * (2 - _lse()) + 0.3 * (0 - _lse())),
                        rel_tol=1e-6)
    assert float(pseudo_label_loss(torch.zeros(0, 3), torch.zeros(0, 3))) == 0.0
    torch.manual_seed(2)
    method = _method("naive-student", unlabeled_weight=0.7, soft_labels=True)
    labeled, unlabeled = torch.randn(4, 1, 28, 28), torch.randn(3, 1, 28, 28)
    labels, targets = torch.tensor([0, 1, 2, 0]), torch.softmax(torch.randn(3, 3), 1)
    kept = torch.tensor([True, False, True, True])
    inputs = (labeled, labels, unlabeled, targets, kept, torch.zeros(4, dtype=torch.long), None)
    losses = method.training_loss(inputs, StepInfo(0, 0, 0.0, torch.Generator()))
    logits = method.logits(torch.cat([labeled, unlabeled]))  # batch norm over both, as one
    expected = (F.cross_entropy(logits[:4], labels)
                - 0.7 * (targets * logits[4:].log_softmax(1)).sum(1).mean())
    assert torch.allclose(losses["loss"], expected, atol=1e-5)


def _lse() -> float:
    return math.log(math.exp(1) + math.exp(2) + math.exp(0))


def _batch(num_images: int = 12) -> Batch:
    generator = torch.Generator().manual_seed(3)
    return Batch(unlabeled=torch.randint(0, 256, (6, 1, 28, 28), dtype=torch.uint8,
                                         generator=generator),
                 indices=torch.tensor([0, 2, 4, 6, 8, 10]),
                 labeled=torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8,
                                       generator=generator),
                 labels=torch.tensor([0, 1, 2]), hidden_labels=torch.tensor([0, 1, 2, 0, 1, 2]))


@pytest.mark.parametrize("name", ["noisy-student", "naive-student", "co-training"])
def test_permuting_hidden_labels_leaves_the_loss_unchanged(name):
    torch.manual_seed(4)
    method = _method(name, threshold=0.0, top_per_class=12)
    _confident(method.average, 3.0)
    images = torch.randint(0, 256, (12, 1, 28, 28), dtype=torch.uint8)
    method.on_epoch_start(_context(images, progress=0.5))
    batch = _batch()
    results = []
    for hidden in (batch.hidden_labels, batch.hidden_labels.flip(0)):
        batch.hidden_labels = hidden
        torch.manual_seed(5)  # dropout
        inputs = method.make_views(batch, torch.Generator().manual_seed(6))
        results.append(method.training_loss(inputs, StepInfo(0, 0, 0.5, torch.Generator())))
    assert torch.equal(results[0]["loss"], results[1]["loss"])
    assert results[0]["unlabeled_loss"] > 0 and results[0]["pseudo_label_rate"] > 0


def test_a_new_student_is_a_fresh_draw_with_its_moving_average_reset():
    torch.manual_seed(6)
    method = _method("naive-student", new_student=True)
    initial = {k: v.clone() for k, v in method.backbone.state_dict().items()}
    with torch.no_grad():
        for parameter in method.backbone.parameters():
            parameter.add_(1.0)
    images = torch.randint(0, 256, (12, 1, 28, 28), dtype=torch.uint8)
    method.on_epoch_start(_context(images, progress=0.5))
    for name, value in method.backbone.state_dict().items():
        if value.is_floating_point() and "running" not in name:  # same entries, reshuffled
            assert torch.equal(value.flatten().sort().values,
                               initial[name].flatten().sort().values), name
    assert any(not torch.equal(value, initial[name])
               for name, value in method.backbone.state_dict().items())  # a new draw
    for average, trained in zip(method.average.parameters(),
                                ClassifierNetwork(method.backbone, method.classifier)
                                .parameters(), strict=True):
        assert torch.equal(average, trained)


# -- co-training -----------------------------------------------------------------------------


def test_a_networks_confident_picks_join_the_other_networks_set_only():
    torch.manual_seed(7)
    method = _method("co-training", rounds=3, threshold=0.5, top_per_class=2)
    _confident(method.average, 3.0)
    with torch.no_grad():  # the second network is unsure of everything: it gives nothing
        method.second_average.classifier.weight.zero_()
        method.second_average.classifier.bias.zero_()
    images = torch.randint(0, 256, (12, 1, 28, 28), dtype=torch.uint8)
    numbers = method.on_epoch_start(_context(images, progress=0.34))
    first = augmented_probabilities(method.average, images, MEAN, STD, views="flip")
    picks = select_pseudo_labels(first, 0.5, 2)
    assert picks.any() and numbers["given_to_second"] == picks.sum()
    assert torch.equal(method.given[1] >= 0, picks)
    assert torch.equal(method.given[1][picks], first.argmax(1)[picks])
    assert (method.given[0] == -1).all()  # nothing in the first network's own set
    # The next round adds only images the second network has no label for yet.
    given_before = method.given[1].clone()
    method.on_epoch_start(_context(images, progress=0.7, epoch=2))
    still = given_before >= 0
    assert torch.equal(method.given[1][still], given_before[still])
    free = first * (given_before < 0)[:, None]
    assert torch.equal(method.given[1] >= 0, still | select_pseudo_labels(free, 0.5, 2))


def test_co_training_evaluates_the_mean_probability_of_its_two_averaged_networks():
    torch.manual_seed(8)
    method = _method("co-training")
    assert isinstance(method, CoTraining)
    images = torch.randn(4, 1, 28, 28)
    network = method.classifier_network().eval()
    with torch.no_grad():
        mean = (method.average(images).softmax(1) + method.second_average(images).softmax(1)) / 2
        assert torch.allclose(network(images).softmax(1), mean, atol=1e-6)
    assert method.representations()["backbone"] is method.average.backbone
    second = method.second_backbone.state_dict()
    assert any(not torch.equal(value, second[name])
               for name, value in method.backbone.state_dict().items())


def test_a_probe_head_start_fits_both_classifiers_each_to_its_own_backbone():
    torch.manual_seed(9)
    method = _method("co-training")
    images = torch.randint(0, 256, (6, 1, 28, 28), dtype=torch.uint8)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    first_backbone = method.backbone
    method.fit_head_(images, labels, iterations=3)
    assert method.backbone is first_backbone  # the networks are back in their places
    alone = _method("supervised")
    alone.backbone.load_state_dict(method.second_backbone.state_dict())
    alone.fit_head_(images, labels, iterations=3)
    assert torch.allclose(method.second_classifier.weight, alone.classifier.weight, atol=1e-6)
    assert not torch.allclose(method.classifier.weight, alone.classifier.weight)
    for average, trained in zip(method.second_average.parameters(),
                                method.second_network().parameters(), strict=True):
        assert torch.equal(average, trained)


def test_shuffling_keeps_each_tensors_entries():
    layer = nn.Linear(5, 4)
    before = layer.weight.detach().clone()
    shuffle_entries_(layer, torch.Generator().manual_seed(0))
    assert torch.equal(layer.weight.flatten().sort().values, before.flatten().sort().values)
    assert not torch.equal(layer.weight, before)


# -- runs through the CLI --------------------------------------------------------------------


@pytest.mark.parametrize("name", ["naive-student", "co-training"])
def test_a_tiny_run_crosses_a_round_and_reports_a_test_accuracy(tmp_path, name):
    out = tmp_path / "run"
    assert main(["semi", "--method", name, *SMALL, "--epochs", "2", "--threshold", "0",
                 "--ema-decay", "0.5", "--out", str(out)]) == 0
    assert 0 <= json.loads((out / "result.json").read_text())["test_accuracy"] <= 1
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    work = [record for record in records if record.get("event") == "epoch_work"]
    assert len(work) == 1 and work[0]["round"] >= 1
    assert any("pseudo_label_rate" in record for record in records)


def test_a_noisy_student_run_resumed_within_a_round_keeps_its_pseudo_labels(tmp_path):
    common = ["semi", "--method", "noisy-student", *SMALL, "--epochs", "2", "--threshold", "0",
              "--ema-decay", "0.5"]
    assert main([*common, "--out", str(tmp_path / "whole")]) == 0
    # 2 steps an epoch: round 1 labels at step 2; stop at step 3, within the round
    assert main([*common, "--out", str(tmp_path / "split"), "--stop-after-steps", "3"]) == 130
    stopped = load_checkpoint(tmp_path / "split")["model"]
    assert int(stopped["rounds_done"]) >= 1 and stopped["kept"].any()
    assert main(["semi", "--out", str(tmp_path / "split"), "--resume", "--no-progress"]) == 0
    whole, resumed = load_checkpoint(tmp_path / "whole"), load_checkpoint(tmp_path / "split")
    assert whole["step"] == resumed["step"] == 4
    assert torch.equal(resumed["model"]["targets"], stopped["targets"])
    for name, value in whole["model"].items():
        assert torch.equal(value, resumed["model"][name]), name
    assert json.loads((tmp_path / "whole" / "result.json").read_text())["test_accuracy"] >= 0
