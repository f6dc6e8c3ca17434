"""Linear probe: multinomial logistic regression on frozen features.

The standard protocol of the self-supervised literature (e.g. Kolesnikov, Zhai and Beyer 2019,
"Revisiting self-supervised visual representation learning"; Chen et al. 2020, SimCLR): a
linear classifier is trained on frozen features of the labeled images and its accuracy on the
test part is reported. Its L2 weight decay is a hyperparameter, and choosing it costs labels:
here it is chosen *inside* the labeled set, by stratified k-fold cross-validation, so that a
budget of k labels per class is all the labels the probe ever sees. With a single label in some
class there is nothing to cross-validate and a fixed default decay is used. A separate
validation part can still be given explicitly (its labels then belong to the budget too).

Features are prepared by :class:`FeaturePreprocessing`: by default every feature vector is
L2-normalised (scaled to norm ``sqrt(D)``, so a coordinate has mean square 1 as after
standardising, and one decay grid suits every choice). Chosen by measurement on 10,000
held-out images of the Fashion-MNIST *train* set, with labeled sets drawn from the other
50,000 (raw pixels / a 4-minute SimCLR ConvNet / random-init ConvNet features, this protocol):
against per-dimension standardisation it gains 3.9 / 0.8 / 6.7 points at 1 label per class
(20 splits), 2.1 / 0.7 / 2.0 at 2 and 0.9 / 0.3 / 0.9 at 5 (10 splits), and is within 0.6 of
it from 10 labels per class up. Also measured: standardising after normalising (0.4 / 2.4 /
1.4 points behind at 1 label per class, -1.9 to +1.9 at 2-5, -0.2 to +0.8 from 10 up) and
centring before normalising (behind on every representation up to 10 labels per class).

The classifier is fitted full-batch with L-BFGS (strong Wolfe line search) on the whole
feature matrix, which is deterministic and takes seconds even for 60,000 x 512 features.
Weight decays are tried from the largest to the smallest, each fit starting from the previous
solution; the final fit on all labeled images starts from the folds' average solution.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from fewlabels.data.splits import stratified_folds
from fewlabels.threads import single_thread_if_small

# Coefficients ``lambda`` of ``mean cross-entropy + lambda / 2 * ||W||^2`` on features whose
# coordinates have mean square about 1 (the bias is not decayed).
# A decay of 10 was measured as a candidate too: cross-validation on a handful of labels often
# picked it (ties go to the larger decay) and it cost up to 3 points on random-init features.
DEFAULT_WEIGHT_DECAYS: tuple[float, ...] = (1.0, 1e-1, 1e-2, 1e-3, 1e-4, 1e-5)
# Used when some class has a single label (nothing to cross-validate) and no validation part
# is given. Measured on L2-normalised features at 1 label per class (20 splits, 10,000
# held-out train images): on the average over raw pixels, SimCLR and random-init features every
# decay from 1e-3 to 0.3 is within 0.1 point of the best (49.1%); 1 and above lose (random-init
# features drop 2 points at 3). A moderate decay also keeps 10 separable points' weights small.
DEFAULT_WEIGHT_DECAY = 0.1
DEFAULT_MAX_ITER = 100
# Cross-validation uses at most this many folds (fewer when a class has fewer labels) ...
DEFAULT_FOLDS = 5
# ... and stops evaluating folds once this many images have been validated: with all 60,000
# labels one fold of 12,000 pins each decay's accuracy to about 0.3 points (one standard
# error), and every further fold would cost six fits on 48,000 images. Up to 1,000 labels per
# class every fold is evaluated.
DEFAULT_CROSS_VALIDATION_IMAGES = 5000
# Below this many feature values the fit runs on one thread (see single_thread_if_small).
_SINGLE_THREAD_BELOW = 1 << 20

PREPROCESSINGS = ("l2", "l2+standardise", "standardise")
DEFAULT_PREPROCESSING = "l2"


@dataclass(eq=False)
class FeaturePreprocessing:
    """How features are prepared for the probe, fitted once per representation.

    ``kind`` is one of :data:`PREPROCESSINGS`: ``"l2"`` scales every feature vector to norm
    ``sqrt(D)``; ``"standardise"`` subtracts ``mean`` and divides by ``std`` per dimension;
    ``"l2+standardise"`` does the first, then the second (with statistics of the normalised
    features). The statistics come from :meth:`fit`, which uses no labels, so fitting it on
    every train-part image (labeled or not) is fair, and with a handful of labeled images far
    less noisy than their own statistics (36% -> 45% on Fashion-MNIST pixels at 1 label per
    class, standardised).
    """

    kind: str = DEFAULT_PREPROCESSING
    mean: torch.Tensor | None = None
    std: torch.Tensor | None = None

    @classmethod
    def fit(cls, features: torch.Tensor, kind: str = DEFAULT_PREPROCESSING
            ) -> FeaturePreprocessing:
        """The preprocessing ``kind`` with the statistics of ``features`` ``[N, D]``."""
        if kind not in PREPROCESSINGS:
            raise ValueError(f"unknown probe preprocessing {kind!r}; one of {PREPROCESSINGS}")
        if "standardise" not in kind:
            return cls(kind)
        with torch.no_grad():
            features = features.float()
            if kind.startswith("l2"):
                features = _l2_normalise(features)
            mean, std = feature_statistics(features)
        return cls(kind, mean, std)

    @torch.no_grad()
    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        """Prepared float32 features, same shape; a new tensor."""
        features = features.float()
        if self.kind.startswith("l2"):
            features = _l2_normalise(features)
        if "standardise" in self.kind:
            if self.mean is None or self.std is None:
                raise ValueError(f"{self.kind!r} preprocessing needs statistics: use fit()")
            features = (features - self.mean.float()) / self.std.float()
        return features.contiguous()

    def describe(self) -> str:
        """One line for a results file."""
        return {
            "l2": "features L2-normalised (to norm sqrt(D))",
            "standardise": "features standardised with the statistics of all train-part "
                           "features",
            "l2+standardise": "features L2-normalised, then standardised with the statistics "
                              "of all normalised train-part features",
        }[self.kind]


def _l2_normalise(features: torch.Tensor) -> torch.Tensor:
    return F.normalize(features, dim=1).mul_(math.sqrt(features.shape[1]))


def feature_statistics(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean and standard deviation of ``features`` ``[N, D]``, for
    standardising; a (near) constant dimension gets a std of 1."""
    features = features.float()
    mean = features.mean(dim=0)
    std = features.std(dim=0, correction=0) if len(features) > 1 else torch.ones_like(mean)
    # A constant dimension stays 0 after centring; dividing by 1 keeps unseen values finite.
    return mean, torch.where(std > 1e-6, std, torch.ones_like(std))


@dataclass
class ProbeResult:
    """Test ``accuracy`` (a fraction) of the probe fitted on all training features with the
    chosen ``weight_decay``, and how that decay was chosen.

    ``chosen_by`` is ``"cross-validation"``, ``"validation"`` (an explicit validation part)
    or ``"default"``, with the ``reason`` why (some class has a single label, ...).
    ``validation_accuracies`` maps every decay tried to the accuracy it was judged by (the
    mean over the evaluated folds, or the validation part's); ``fold_accuracies`` holds the
    per-fold accuracies; ``folds`` is the number of folds of the partition and
    ``folds_evaluated`` how many of them were fitted. ``iterations`` and ``evaluations`` add
    up L-BFGS work over every fit, cross-validation included.

    The fitted classifier itself (``weight`` ``[classes, D]``, ``bias`` ``[classes]``, on
    features prepared by ``preprocessing``) predicts new images with :meth:`logits` and
    :meth:`probabilities` (active learning queries and calibration use them).
    """

    accuracy: float
    weight_decay: float
    train_accuracy: float
    chosen_by: str = "default"
    reason: str = ""
    validation_accuracy: float | None = None
    validation_accuracies: dict[float, float] = field(default_factory=dict)
    fold_accuracies: dict[float, list[float]] = field(default_factory=dict)
    folds: int = 0
    folds_evaluated: int = 0
    iterations: int = 0
    evaluations: int = 0
    weight: torch.Tensor | None = field(default=None, repr=False, compare=False)
    bias: torch.Tensor | None = field(default=None, repr=False, compare=False)
    preprocessing: FeaturePreprocessing | None = field(default=None, repr=False, compare=False)

    @torch.no_grad()
    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """The fitted probe's logits ``[N, classes]`` for raw features ``[N, D]`` (prepared
        with the probe's preprocessing first)."""
        if self.weight is None or self.bias is None or self.preprocessing is None:
            raise ValueError("this ProbeResult holds no fitted classifier")
        return torch.addmm(self.bias, self.preprocessing(features), self.weight.T)

    def probabilities(self, features: torch.Tensor) -> torch.Tensor:
        """Softmax of :meth:`logits`, ``[N, classes]``."""
        return self.logits(features).softmax(dim=1)


@dataclass
class _Fit:
    weight: torch.Tensor  # [classes, D], as in nn.Linear
    bias: torch.Tensor  # [classes]
    iterations: int
    evaluations: int = 0

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.bias, features, self.weight.T)

    def accuracy(self, features: torch.Tensor, labels: torch.Tensor) -> float:
        return (self.logits(features).argmax(1) == labels).float().mean().item()


def _fit(
    features: torch.Tensor,
    labels: torch.Tensor,
    weight_decay: float,
    start: _Fit,
    max_iter: int,
) -> _Fit:
    weight, bias = start.weight.clone(), start.bias.clone()
    optimizer = torch.optim.LBFGS(
        [weight, bias], lr=1.0, max_iter=max_iter, history_size=10,
        tolerance_grad=1e-6, tolerance_change=1e-9, line_search_fn="strong_wolfe",
    )

    one_hot = F.one_hot(labels, weight.shape[0]).to(features.dtype)  # [N, classes]
    scale = 1.0 / len(features)

    # The gradient is written by hand: ``G.T @ X`` is several times faster on CPU than the
    # ``X.T @ G`` that autograd computes for a tall feature matrix, and no graph is kept.
    @torch.no_grad()
    def closure() -> torch.Tensor:
        logits = torch.addmm(bias, features, weight.T)  # [N, classes]
        log_probabilities = logits.log_softmax(dim=1)
        loss = -log_probabilities.gather(1, labels[:, None]).sum() * scale
        loss += 0.5 * weight_decay * weight.square().sum()
        residual = (log_probabilities.exp_() - one_hot).mul_(scale)  # dloss/dlogits
        weight.grad = residual.T @ features + weight_decay * weight  # [classes, D]
        bias.grad = residual.sum(dim=0)
        return loss

    with single_thread_if_small(features.numel(), _SINGLE_THREAD_BELOW):
        optimizer.step(closure)
    state = optimizer.state[weight]
    return _Fit(weight, bias, int(state.get("n_iter", 0)), int(state.get("func_evals", 0)))


def _zero_fit(num_classes: int, dimension: int) -> _Fit:
    return _Fit(torch.zeros(num_classes, dimension), torch.zeros(num_classes), 0)


@dataclass
class _Selection:
    """The outcome of choosing a decay: the decay, a start for the final fit, the record."""

    decay: float
    start: _Fit | None = None
    accuracies: dict[float, float] = field(default_factory=dict)
    fold_accuracies: dict[float, list[float]] = field(default_factory=dict)
    folds: int = 0
    folds_evaluated: int = 0
    iterations: int = 0
    evaluations: int = 0

    def count(self, fit: _Fit) -> None:
        self.iterations += fit.iterations
        self.evaluations += fit.evaluations


def _best(accuracies: dict[float, float]) -> float:
    """The decay with the best accuracy; ties go to the larger decay, the simpler model."""
    return max(accuracies, key=lambda decay: (accuracies[decay], decay))


def _decay_path(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    judge_x: torch.Tensor,
    judge_y: torch.Tensor,
    decays: Sequence[float],
    num_classes: int,
    max_iter: int,
) -> list[tuple[_Fit, float]]:
    """Fit every decay (large to small, each fit starting from the previous solution); return
    each fit with its accuracy on the judging features."""
    fit, path = _zero_fit(num_classes, train_x.shape[1]), []
    for decay in decays:
        fit = _fit(train_x, train_y, decay, fit, max_iter)
        with torch.no_grad():
            path.append((fit, fit.accuracy(judge_x, judge_y)))
    return path


def cross_validation_folds(labels: torch.Tensor, folds: int = DEFAULT_FOLDS) -> int:
    """The number of folds cross-validation uses on ``labels``: ``min(folds, smallest class
    count)`` over the classes present, or 0 when that is below 2 (a class with one label
    cannot be both fitted and validated)."""
    counts = torch.bincount(labels.long().cpu())
    smallest = int(counts[counts > 0].min()) if len(labels) else 0
    usable = min(folds, smallest)
    return usable if usable >= 2 else 0


def _cross_validate(
    x: torch.Tensor,
    y: torch.Tensor,
    decays: Sequence[float],
    *,
    num_classes: int,
    folds: int,
    seed: int,
    max_iter: int,
    cross_validation_images: int,
) -> _Selection:
    selection = _Selection(decays[0], folds=folds)
    fits: dict[float, list[_Fit]] = {decay: [] for decay in decays}
    validated = 0
    for fold in stratified_folds(y, folds, seed):
        if validated >= cross_validation_images:
            break
        held_out = torch.zeros(len(y), dtype=torch.bool)
        held_out[fold] = True
        path = _decay_path(x[~held_out].contiguous(), y[~held_out], x[held_out], y[held_out],
                           decays, num_classes, max_iter)
        for decay, (fit, accuracy) in zip(decays, path, strict=True):
            selection.count(fit)
            fits[decay].append(fit)
            selection.fold_accuracies.setdefault(decay, []).append(accuracy)
        validated += len(fold)
        selection.folds_evaluated += 1
    selection.accuracies = {decay: math.fsum(accuracies) / len(accuracies)
                            for decay, accuracies in selection.fold_accuracies.items()}
    selection.decay = _best(selection.accuracies)
    # The folds' solutions at the chosen decay are close to the final one: start from their
    # average.
    chosen = fits[selection.decay]
    selection.start = _Fit(torch.stack([fit.weight for fit in chosen]).mean(0),
                           torch.stack([fit.bias for fit in chosen]).mean(0), 0)
    return selection


def linear_probe(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    *,
    num_classes: int,
    validation_features: torch.Tensor | None = None,
    validation_labels: torch.Tensor | None = None,
    weight_decays: Sequence[float] = DEFAULT_WEIGHT_DECAYS,
    default_weight_decay: float = DEFAULT_WEIGHT_DECAY,
    max_iter: int = DEFAULT_MAX_ITER,
    preprocessing: FeaturePreprocessing | None = None,
    folds: int = DEFAULT_FOLDS,
    seed: int = 0,
    cross_validation_images: int = DEFAULT_CROSS_VALIDATION_IMAGES,
) -> ProbeResult:
    """Fit a linear classifier on ``train_features`` ``[N, D]`` and report its test accuracy.

    The weight decay is chosen among ``weight_decays`` with the labels given and no others:

    - with validation features, by accuracy on them (they are never fitted);
    - otherwise, when every class present has at least 2 labels and ``folds >= 2``, by
      stratified cross-validation over the training features with
      ``min(folds, smallest class count)`` folds, seeded by ``seed``
      (:func:`~fewlabels.data.splits.stratified_folds`); folds are evaluated in turn until
      ``cross_validation_images`` images have been validated (all of them up to that size);
    - otherwise ``default_weight_decay`` is used.

    The best (mean) accuracy wins, ties going to the larger decay; the probe is then fitted on
    all training features with it. ``max_iter`` bounds the L-BFGS iterations per fit.
    ``preprocessing`` prepares every part (default: :meth:`FeaturePreprocessing.fit` on
    ``train_features``).
    """
    if len(train_features) == 0:
        raise ValueError("linear_probe needs at least one training feature")
    decays = sorted({float(decay) for decay in weight_decays}, reverse=True)
    if preprocessing is None:
        preprocessing = FeaturePreprocessing.fit(train_features)
    train_x, train_y = preprocessing(train_features), train_labels.long()
    test_x, test_y = preprocessing(test_features), test_labels.long()

    reason = ""
    if validation_features is not None and len(validation_features) > 0:
        if validation_labels is None:
            raise ValueError("validation_features given without validation_labels")
        if not decays:
            raise ValueError("linear_probe needs at least one weight decay to choose from")
        chosen_by, selection = "validation", _Selection(decays[0])
        path = _decay_path(train_x, train_y, preprocessing(validation_features),
                           validation_labels.long(), decays, num_classes, max_iter)
        for fit, _ in path:
            selection.count(fit)
        selection.accuracies = {decay: accuracy
                                for decay, (_, accuracy) in zip(decays, path, strict=True)}
        selection.decay = _best(selection.accuracies)
        final = path[decays.index(selection.decay)][0]  # fitted on all training features
    else:
        usable_folds = cross_validation_folds(train_y, folds)
        if usable_folds and decays:
            chosen_by = "cross-validation"
            selection = _cross_validate(
                train_x, train_y, decays, num_classes=num_classes, folds=usable_folds,
                seed=seed, max_iter=max_iter, cross_validation_images=cross_validation_images)
        else:
            chosen_by, selection = "default", _Selection(float(default_weight_decay))
            reason = ("no weight decays to choose from" if not decays
                      else "cross-validation turned off" if folds < 2
                      else "a class has a single label")
        start = selection.start or _zero_fit(num_classes, train_x.shape[1])
        final = _fit(train_x, train_y, selection.decay, start, max_iter)
        selection.count(final)

    with torch.no_grad():
        return ProbeResult(
            accuracy=final.accuracy(test_x, test_y),
            weight_decay=selection.decay,
            train_accuracy=final.accuracy(train_x, train_y),
            chosen_by=chosen_by,
            reason=reason,
            validation_accuracy=selection.accuracies.get(selection.decay),
            validation_accuracies=selection.accuracies,
            fold_accuracies=selection.fold_accuracies,
            folds=selection.folds,
            folds_evaluated=selection.folds_evaluated,
            iterations=selection.iterations,
            evaluations=selection.evaluations,
            weight=final.weight.detach(),
            bias=final.bias.detach(),
            preprocessing=preprocessing,
        )
