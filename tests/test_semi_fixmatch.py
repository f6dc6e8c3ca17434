"""FixMatch, UDA, FlexMatch, FreeMatch and MixMatch: their unlabeled losses on hand-made logits
against hand-derived values, the FixMatch mask, MixMatch's guessed labels and mixed targets,
FlexMatch's thresholds as images become confident, hidden labels never trained on, two
processes equal to one, and one tiny run of each through the CLI."""

import copy
import json
import math

import pytest
import torch

from engine_harness import compare_one_and_two_processes
from fewlabels.cli import main
from fewlabels.engine.checkpoint import load_checkpoint
from fewlabels.losses.consistency import MixUp
from fewlabels.methods.base import Batch, DataInfo, StepInfo
from fewlabels.models import build_backbone
from fewlabels.semi import SEMI_METHODS
from fewlabels.semi.fixmatch import WeakStrongViews
from fewlabels.semi.mixmatch import MixMatchViews
from fewlabels.semi.uda import tsa_threshold

LN = math.log
METHODS = ["fixmatch", "uda", "flexmatch", "freematch", "mixmatch"]


def _method(name: str, classes: int = 3, num_images: int = 8, **options):
    torch.manual_seed(0)
    data = DataInfo(1, 28, (0.5,), (0.25,), num_classes=classes, num_images=num_images)
    chosen = SEMI_METHODS.get(name)
    backbone = build_backbone("convnet", in_channels=1, image_size=28, width=4, depth=2)
    return chosen(backbone, chosen.Config(**options), data)


def _step(progress: float = 1.0, seed: int = 0) -> StepInfo:
    return StepInfo(0, 0, progress, torch.Generator().manual_seed(seed))


def _fixed_logits(method, *tables):
    """Make the method's network return the given rows (one table per forward pass)."""
    queue = [torch.tensor(table, dtype=torch.float32, requires_grad=True) for table in tables]
    method.logits = lambda images: queue.pop(0)


def _weak_strong(labels, unlabeled: int, indices=None, hidden=None) -> WeakStrongViews:
    images = torch.zeros(unlabeled, 1, 28, 28)
    indices = torch.arange(unlabeled) if indices is None else torch.tensor(indices)
    hidden = None if hidden is None else torch.tensor(hidden)
    return WeakStrongViews(torch.zeros(len(labels), 1, 28, 28), torch.tensor(labels), images,
                           images, indices, hidden)


# Rows of 3 logits: weak views with max probability 57/59 = 0.966 (>= 0.95), 19/21 = 0.905
# and 1/3; strong views [0, ln 2, 0] have probabilities [1/4, 1/2, 1/4].
LABELED = [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]  # labels 0, 1: cross-entropy ln 3 each
WEAK = [[LN(57), 0, 0], [0, LN(57), 0], [LN(19), 0, 0], [0, 0, 0]]
STRONG = [[0, LN(2), 0]] * 4


@pytest.mark.parametrize("threshold, rate, unlabeled", [
    (0.95, 0.5, (LN(4) + LN(2)) / 4),  # rows 0 (label 0) and 1 (label 1)
    (0.9, 0.75, (LN(4) + LN(2) + LN(4)) / 4),  # and row 2 (label 0)
    (0.99, 0.0, 0.0),
])
def test_the_fixmatch_mask_counts_exactly_the_unlabeled_images_above_the_threshold(
        threshold, rate, unlabeled):
    method = _method("fixmatch", threshold=threshold)
    _fixed_logits(method, LABELED + WEAK + STRONG)
    losses = method.training_loss(_weak_strong([0, 1], 4, hidden=[0, 0, 0, 2]), _step())
    assert losses["pseudo_label_rate"].item() == rate
    assert losses["unlabeled_loss"].item() == pytest.approx(unlabeled, abs=1e-6)
    assert losses["loss"].item() == pytest.approx(LN(3) + unlabeled, abs=1e-6)
    assert losses["unlabeled_accuracy"].item() == 0.5  # pseudo-labels 0 1 0 0 vs 0 0 0 2
    if rate == 0.5:
        assert losses["pseudo_label_accuracy"].item() == 0.5


def test_fixmatch_soft_pseudo_labels_are_the_sharpened_weak_predictions():
    method = _method("fixmatch", pseudo_labels="soft", temperature=0.5)
    _fixed_logits(method, LABELED + WEAK + STRONG)
    losses = method.training_loss(_weak_strong([0, 1], 4), _step())
    # Row 0: target [57², 1, 1] / 3251 against [1/4, 1/2, 1/4]; row 1: [1, 57², 1] / 3251.
    row0 = (3250 * LN(4) + LN(2)) / 3251
    row1 = (2 * LN(4) + 3249 * LN(2)) / 3251
    assert losses["unlabeled_loss"].item() == pytest.approx((row0 + row1) / 4, abs=1e-6)


def test_fixmatch_distribution_alignment_rescales_the_weak_predictions_before_the_mask():
    method = _method("fixmatch", distribution_alignment=True)
    method.alignment.prediction_mean.copy_(torch.tensor([0.5, 0.25, 0.25]))
    _fixed_logits(method, LABELED + WEAK + STRONG)
    losses = method.training_loss(_weak_strong([0, 1], 4), _step())
    # x uniform prior / mean = [2/3, 4/3, 4/3]: row 0 -> [57, 2, 2] / 61 = 0.934 (out),
    # row 1 -> [1, 114, 2] / 117 = 0.974 (in), row 2 -> [19, 2, 2] / 23 (out).
    assert losses["pseudo_label_rate"].item() == 0.25
    assert losses["unlabeled_loss"].item() == pytest.approx(LN(2) / 4, abs=1e-6)
    weak = torch.tensor(WEAK).softmax(dim=1)
    assert torch.allclose(method.alignment.history[-1], weak.mean(dim=0))  # then updated


def test_uda_unlabeled_loss_is_the_masked_kl_from_the_sharpened_weak_view():
    method = _method("uda", classes=2)
    weak = [[LN(9), 0.0], [0.0, 0.0]]  # [0.9, 0.1] passes beta = 0.8; [0.5, 0.5] does not
    _fixed_logits(method, [[0.0, 0.0]] + weak + [[0.0, 0.0]] * 2)
    losses = method.training_loss(_weak_strong([0], 2), _step())
    target = torch.tensor([243.0, 1.0]) / 244  # softmax([ln 9, 0] / 0.4): 9^2.5 = 243
    kl = float((target * (target / 0.5).log()).sum())
    assert losses["unlabeled_loss"].item() == pytest.approx(kl / 2, abs=1e-6)
    assert losses["loss"].item() == pytest.approx(LN(2) + kl / 2, abs=1e-6)
    assert losses["pseudo_label_rate"].item() == 0.5


def test_uda_training_signal_annealing_leaves_out_labeled_images_above_eta():
    assert tsa_threshold("linear", 0.5, 2) == pytest.approx(0.75)
    assert tsa_threshold("log", 0.2, 2) == pytest.approx(0.5 + 0.5 * (1 - math.exp(-1)))
    assert tsa_threshold("exp", 1.0, 10) == pytest.approx(1.0)
    method = _method("uda", classes=2, tsa="linear")
    # progress 0.2: eta = 0.6; the first labeled image has p(y) = 0.75 and leaves the loss.
    _fixed_logits(method, [[LN(3), 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    losses = method.training_loss(_weak_strong([0, 1], 1), _step(progress=0.2))
    assert losses["supervised_loss"].item() == pytest.approx(LN(2), abs=1e-6)
    assert losses["tsa_kept"].item() == 0.5


def test_mixmatch_guesses_the_sharpened_mean_of_the_k_views():
    method = _method("mixmatch", classes=2)
    _fixed_logits(method, [[LN(3), 0.0], [0.0, 0.0]])  # views of one image: [.75, .25], [.5, .5]
    guess = method.guess_labels(torch.zeros(2, 1, 28, 28))
    # mean [5/8, 3/8], squared and normalised (T = 1/2): [25, 9] / 34
    assert torch.allclose(guess, torch.tensor([[25 / 34, 9 / 34]]), atol=1e-6)


def test_mixmatch_mixes_rows_with_targets_that_sum_to_one_and_keep_most_of_themselves():
    method = _method("mixmatch", classes=3)
    labels = torch.tensor([0, 1, 2, 0])
    guesses = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    labeled, unlabeled = torch.rand(4, 1, 28, 28), torch.rand(4, 1, 28, 28)
    mixed = method.mix(labeled, labels, unlabeled, guesses, torch.Generator().manual_seed(3))
    targets = torch.cat([torch.eye(3)[labels], guesses, guesses])
    assert torch.allclose(mixed.targets.sum(dim=1), torch.ones(8), atol=1e-6)
    assert bool((mixed.weights >= 0.5).all())
    weights = mixed.weights[:, None]
    expected = weights * targets + (1 - weights) * targets[mixed.permutation]
    assert torch.allclose(mixed.targets, expected, atol=1e-6)
    images = torch.cat([labeled, unlabeled])
    assert torch.allclose(mixed.inputs, weights[:, :, None, None] * images
                          + (1 - weights[:, :, None, None]) * images[mixed.permutation],
                          atol=1e-6)


def test_mixmatch_unlabeled_loss_is_the_squared_error_to_the_guess_ramped_up(monkeypatch):
    def no_mixing(inputs, targets, alpha, generator=None):
        count = len(inputs)
        return MixUp(inputs, targets, torch.ones(count), torch.arange(count))

    monkeypatch.setattr("fewlabels.semi.mixmatch.mixup", no_mixing)
    for progress, weight in ((1.0, 75.0), (1 / 128, 37.5)):
        method = _method("mixmatch", classes=2)
        guess_pass = [[LN(3), 0.0], [0.0, 0.0]]  # guess [25/34, 9/34]
        _fixed_logits(method, guess_pass, [[0.0, 0.0]] * 3)  # labeled row, then 2 views
        inputs = MixMatchViews(torch.zeros(1, 1, 28, 28), torch.tensor([0]),
                               torch.zeros(2, 1, 28, 28), None)
        losses = method.training_loss(inputs, _step(progress))
        # |0.5 - 25/34| = |0.5 - 9/34| = 4/17 on every row and class
        assert losses["unlabeled_loss"].item() == pytest.approx(16 / 289, abs=1e-6)
        assert losses["loss"].item() == pytest.approx(LN(2) + weight * 16 / 289, abs=1e-5)
        assert losses["pseudo_label_rate"].item() == 1.0


def test_flexmatch_thresholds_follow_the_images_that_became_confident():
    method = _method("flexmatch", num_images=8)
    assert torch.equal(method.thresholds.class_thresholds(), torch.zeros(3))
    confident = [[LN(57), 0, 0]] * 3 + [[0, LN(57), 0]]
    _fixed_logits(method, [[0.0, 0.0, 0.0]] + confident + STRONG)
    losses = method.training_loss(_weak_strong([0], 4, indices=[0, 1, 2, 3]), _step())
    assert losses["pseudo_label_rate"].item() == 1.0  # every threshold was 0
    assert method.thresholds.predictions.tolist() == [0, 0, 0, 1, -1, -1, -1, -1]
    # sigma = [3, 1, 0], 4 images unused: beta = [3/4, 1/4, 0], T = beta / (2 - beta) * 0.95
    expected = torch.tensor([0.95 * 0.75 / 1.25, 0.95 * 0.25 / 1.75, 0.0])
    assert torch.allclose(method.thresholds.class_thresholds(), expected)
    # Now class 0 needs 0.57: 0.5 is out, 0.667 in; class 1 needs 0.136, class 2 nothing.
    weak = [[LN(2), 0, 0], [LN(4), 0, 0], [0, 0, LN(2)], [0, LN(2), 0]]
    _fixed_logits(method, [[0.0, 0.0, 0.0]] + weak + STRONG)
    losses = method.training_loss(_weak_strong([0], 4, indices=[4, 5, 6, 7]), _step())
    assert losses["pseudo_label_rate"].item() == 0.75
    # strong [1/4, 1/2, 1/4]: labels 0 and 2 cost ln 4, label 1 ln 2; the row out costs 0
    assert losses["unlabeled_loss"].item() == pytest.approx((2 * LN(4) + LN(2)) / 4, abs=1e-6)
    assert losses["threshold_max"].item() == pytest.approx(0.57)
    assert method.thresholds.predictions.tolist() == [0, 0, 0, 1, -1, -1, -1, -1]


def test_freematch_updates_its_thresholds_then_masks_and_adds_the_fairness_loss():
    method = _method("freematch", threshold_momentum=0.5)
    weak = [[LN(3), 0, 0], [0, LN(2), 0]]  # probabilities [.6, .2, .2] and [.25, .5, .25]
    _fixed_logits(method, [[0.0, 0.0, 0.0]] + weak + [[0, LN(2), 0]] * 2)
    losses = method.training_loss(_weak_strong([0], 2), _step())
    # tau = 1/2 * 1/3 + 1/2 * mean(.6, .5); p~ = 1/2 * 1/3 + 1/2 * mean of the rows
    tau = 0.5 / 3 + 0.5 * 0.55
    p_mean = [0.5 / 3 + 0.5 * value for value in (0.425, 0.35, 0.225)]
    thresholds = [value / max(p_mean) * tau for value in p_mean]  # [.4417, .3980, .3252]
    assert torch.allclose(method.thresholds.class_thresholds(), torch.tensor(thresholds))
    assert losses["pseudo_label_rate"].item() == 1.0  # .6 >= .4417 and .5 >= .3980
    assert losses["unlabeled_loss"].item() == pytest.approx((LN(4) + LN(2)) / 2, abs=1e-6)
    # Fairness: both strong rows predict class 1, so the batch side is one-hot [0, 1, 0]
    # (log 1e-12 elsewhere); the target is SumNorm(p~ / h~), h~ = 1/2 * 1/3 + 1/2 * [.5, .5, 0].
    histogram = [0.5 / 3 + 0.5 * value for value in (0.5, 0.5, 0.0)]
    ratio = [p / h for p, h in zip(p_mean, histogram, strict=True)]
    target = [value / sum(ratio) for value in ratio]
    fairness = (target[0] + target[2]) * LN(1e-12)
    assert losses["fairness_loss"].item() == pytest.approx(fairness, rel=1e-5)
    assert losses["loss"].item() == pytest.approx(
        LN(3) + (LN(4) + LN(2)) / 2 + 0.001 * fairness, abs=1e-5)


def _real_inputs(method, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (4 + 8, 1, 28, 28), generator=generator, dtype=torch.uint8)
    batch = Batch(unlabeled=images[4:], indices=torch.arange(8), labeled=images[:4],
                  labels=torch.tensor([0, 1, 2, 0]), hidden_labels=torch.arange(8) % 3)
    return method.make_views(batch, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", METHODS)
def test_permuting_the_hidden_labels_leaves_every_loss_unchanged(name):
    method = _method(name, unlabeled_ratio=2, **({"threshold": 0.4} if name != "mixmatch"
                                                 else {}))
    inputs = _real_inputs(method)
    permuted = inputs._replace(hidden_labels=inputs.hidden_labels[torch.randperm(8)])
    first = copy.deepcopy(method).training_loss(inputs, _step(0.5))
    second = copy.deepcopy(method).training_loss(permuted, _step(0.5))
    assert set(first) == set(second)
    for key, value in first.items():
        if not key.endswith("accuracy") or key == "labeled_accuracy":
            assert torch.equal(value, second[key]), key


@pytest.mark.slow
@pytest.mark.parametrize("name, options", [
    ("fixmatch", {"distribution_alignment": True, "threshold": 0.4}),
    ("flexmatch", {"threshold": 0.5}),  # low enough for images to become confident
])
def test_two_processes_train_fixmatch_and_flexmatch_as_one_does(tmp_path, name, options):
    # Float32 rounding reaches ~3e-5 in the first layer when every unlabeled image trains
    # (FlexMatch's thresholds start at 0), against ~5e-6 when few do.
    single = compare_one_and_two_processes(
        tmp_path, name, {"unlabeled_ratio": 2, **options},
        {"name": "convnet", "width": 4, "depth": 2}, steps=3, batch_size=8, labeled=12,
        atol=1e-5 if name == "fixmatch" else 1e-4)
    if name == "flexmatch":  # the gathered state is not trivial: images became confident
        assert int((single["state"]["thresholds.predictions"] >= 0).sum()) > 0


SMALL = ["--labels-per-class", "2", "--max-unlabeled", "64", "--epochs", "1", "--data",
         "fashion-mnist-sample", "--width", "4", "--depth", "2", "--batch-size", "8",
         "--unlabeled-ratio", "2", "--no-progress"]


@pytest.mark.parametrize("name", METHODS)
def test_a_tiny_run_through_the_cli(tmp_path, name):
    out = tmp_path / "run"
    assert main(["semi", "--method", name, *SMALL, "--out", str(out)]) == 0
    result = json.loads((out / "result.json").read_text())
    assert 0.0 <= result["test_accuracy"] <= 1.0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("pseudo_label_rate" in record for record in records)
    checkpoint = load_checkpoint(out)
    assert checkpoint["run"]["data"]["info"]["num_images"] == 64  # the unlabeled pool
    if name == "flexmatch":
        assert checkpoint["model"]["thresholds.predictions"].numel() == 64
