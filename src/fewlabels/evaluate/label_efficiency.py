"""Label-efficiency curves: accuracy as a function of the number of labels per class.

A budget is the number of labels the whole protocol uses. For every budget of labels per class
and every split seed, :func:`make_split` chooses the labeled images; each protocol then runs
on each representation's features, extracted once for the whole train and test parts, and
sees the labels of those images only. The linear probe chooses its weight decay inside the
labeled set, by stratified cross-validation seeded by the split seed (a fixed default when a
class has a single label), and prepares features with statistics that need no labels
(:class:`FeaturePreprocessing`, fitted on the whole train part).

Three rows train networks instead of reading frozen features, on the same labeled images
of every split: fine-tuning (``finetune``: the representation's backbone and a new linear
classifier, all weights trained; :mod:`fewlabels.evaluate.finetune`), semi-supervised
training from the representation's backbone (``semi``: the labels and the train part's
images without theirs; :mod:`fewlabels.evaluate.semi_protocol`) and the supervised
baseline from scratch (``supervised``); all on the engine's one training loop.

An extra validation part for the probe stays available as an explicit option
(``validation_per_class > 0``): its labels are then counted in the budget, and every cell and
the settings record the labels a protocol actually used. The "all labels" budget is a single
split (it does not depend on the seed except for which images are held out for validation),
so it runs with the first seed only. Each cell reports the mean and sample std over seeds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

import torch

from fewlabels.data.imageset import ImageSet
from fewlabels.data.splits import Split, make_split
from fewlabels.errors import UserError
from fewlabels.evaluate.features import FeatureProvider
from fewlabels.evaluate.knn import knn_accuracy
from fewlabels.evaluate.linear_probe import (
    DEFAULT_CROSS_VALIDATION_IMAGES,
    DEFAULT_FOLDS,
    DEFAULT_MAX_ITER,
    DEFAULT_PREPROCESSING,
    DEFAULT_WEIGHT_DECAY,
    DEFAULT_WEIGHT_DECAYS,
    PREPROCESSINGS,
    FeaturePreprocessing,
    ProbeResult,
    linear_probe,
)
from fewlabels.evaluate.table import Cell, Results, budget_label

PROTOCOLS = ("knn", "linear")
DEFAULT_BUDGETS: tuple[int | None, ...] = (1, 10, 100, None)
DEFAULT_SEEDS = (0, 1, 2)
DEFAULT_VALIDATION_PER_CLASS = 0

Representation = FeatureProvider | tuple[torch.Tensor, torch.Tensor]


class Predictor(Protocol):
    """What the supervised baseline returns: a model that labels uint8 images."""

    def predict(self, images_uint8: torch.Tensor) -> torch.Tensor: ...


SupervisedTrainer = Callable[[ImageSet, int], Predictor]


def _features(
    name: str, representation: Representation, train: ImageSet, test: ImageSet
) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(representation, tuple):
        train_features, test_features = representation
    else:
        train_features, test_features = representation(train, "train"), representation(test, "test")
    if len(train_features) != len(train) or len(test_features) != len(test):
        raise ValueError(
            f"representation {name!r} has {len(train_features)}/{len(test_features)} features "
            f"for {len(train)}/{len(test)} train/test images"
        )
    return train_features.float().cpu(), test_features.float().cpu()


def _check(
    train: ImageSet, test: ImageSet, protocols: Iterable[str], seeds: Sequence[int]
) -> None:
    if train.labels is None or test.labels is None:
        raise UserError("label-efficiency evaluation needs labels on the train and test parts")
    unknown = [p for p in protocols if p not in PROTOCOLS]
    if unknown:
        raise UserError(f"unknown protocol {unknown[0]!r}; valid protocols: {', '.join(PROTOCOLS)}")
    if not seeds:
        raise UserError("label-efficiency evaluation needs at least one split seed")


def evaluate_label_efficiency(
    representations: Mapping[str, Representation],
    train: ImageSet,
    test: ImageSet,
    *,
    protocols: Sequence[str] = PROTOCOLS,
    labels_per_class: Sequence[int | None] = DEFAULT_BUDGETS,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    validation_per_class: int = DEFAULT_VALIDATION_PER_CLASS,
    knn_k: int = 200,
    knn_temperature: float = 0.1,
    weight_decays: Sequence[float] = DEFAULT_WEIGHT_DECAYS,
    default_weight_decay: float = DEFAULT_WEIGHT_DECAY,
    max_iter: int = DEFAULT_MAX_ITER,
    folds: int = DEFAULT_FOLDS,
    cross_validation_images: int = DEFAULT_CROSS_VALIDATION_IMAGES,
    probe_preprocessing: str = DEFAULT_PREPROCESSING,
    supervised: SupervisedTrainer | None = None,
    supervised_name: str = "scratch",
    finetune: SupervisedTrainer | None = None,
    finetune_name: str | None = None,
    semi: SupervisedTrainer | None = None,
    log: Callable[[str], None] | None = None,
) -> Results:
    """Run ``protocols`` ("knn", "linear") on every representation at every budget and seed.

    ``representations`` maps a name to a :class:`FeatureProvider` (called once with the train
    and once with the test part) or to precomputed ``(train_features, test_features)``.
    ``labels_per_class`` holds budgets, ``None`` meaning all labels. The linear probe
    cross-validates its weight decay over ``weight_decays`` with up to ``folds`` folds of the
    labeled images (``folds=0``: always ``default_weight_decay``), unless
    ``validation_per_class`` > 0 asks for that many more labeled images per class to choose it
    on, which the probe's cells then count as labels used. ``probe_preprocessing`` names the
    probe's :class:`FeaturePreprocessing`. ``supervised(labeled, seed)``, when given, trains a
    model from scratch on the labeled images of each split; it becomes the row
    (``supervised_name``, "supervised"). ``finetune(labeled, seed)``, when given, fine-tunes
    the representation ``finetune_name`` (default: the first) on the same labeled images: the
    row (``finetune_name``, "finetune"), after that representation's other rows.
    ``semi(labeled, seed)`` likewise trains a semi-supervised classifier from that
    representation (the row (``finetune_name``, "semi")); it may also read the train part's
    images, never their labels. The trained rows read the labels of the split only. With no
    feature protocol (``protocols`` empty), no features are extracted. A budget larger than a
    class allows raises :class:`UserError` (from :func:`make_split`) before any work is done.
    """
    _check(train, test, protocols, seeds)
    if probe_preprocessing not in PREPROCESSINGS:
        raise ValueError(f"unknown probe preprocessing {probe_preprocessing!r}; "
                         f"one of {PREPROCESSINGS}")
    assert train.labels is not None and test.labels is not None
    say = log or (lambda message: None)
    num_classes = max(train.num_classes, int(train.labels.max()) + 1, int(test.labels.max()) + 1)
    budgets = list(dict.fromkeys(labels_per_class))
    splits: dict[tuple[int | None, int], Split] = {}
    for budget in budgets:
        for seed in seeds if budget is not None else seeds[:1]:
            splits[budget, seed] = make_split(train.labels, budget, seed, validation_per_class)

    features, preprocessing = {}, {}
    for name, representation in (representations if protocols else {}).items():
        say(f"features: {name}")
        features[name] = _features(name, representation, train, test)
        # Statistics of every train-part feature: no labels involved.
        preprocessing[name] = FeaturePreprocessing.fit(features[name][0], probe_preprocessing)

    trained: dict[tuple[str, str], SupervisedTrainer] = {}
    finetune_name = finetune_name or next(iter(representations), "fine-tuned")
    for protocol, trainer in (("finetune", finetune), ("semi", semi)):
        if trainer is not None:
            trained[finetune_name, protocol] = trainer
    if supervised is not None:
        trained[supervised_name, "supervised"] = supervised
    cells: dict[tuple[str, str, int | None], Cell] = {}
    row_keys = []
    for name in representations:
        row_keys += [(name, protocol) for protocol in protocols]
        row_keys += [key for key in trained if key in ((name, "finetune"), (name, "semi"))]
    row_keys += [key for key in trained if key not in row_keys]
    for budget in budgets:
        for name, protocol in row_keys:
            cells[name, protocol, budget] = Cell(name, protocol, budget)

    labels_used: dict[str, dict[str, dict[str, float]]] = {}
    for (budget, seed), split in splits.items():
        # The only train labels any protocol reads: the labeled images' (and, when asked
        # for, the validation part's).
        labeled_y = train.labels[split.labeled]
        validation_y = train.labels[split.validation]
        used = {
            "knn": _count(labeled_y, num_classes),
            "linear": _count(torch.cat([labeled_y, validation_y]), num_classes),
            "supervised": _count(labeled_y, num_classes),
            "finetune": _count(labeled_y, num_classes),
            "semi": _count(labeled_y, num_classes),
        }
        labels_used[budget_label(budget)] = {
            protocol: {"per_class": used[protocol][0], "total": used[protocol][1]}
            for protocol in [*protocols, *(protocol for _, protocol in trained)]
        }
        for name, (train_features, test_features) in features.items():
            labeled_x = train_features[split.labeled]
            for protocol in protocols:
                value, detail = _run_protocol(
                    protocol, labeled_x, labeled_y, train_features[split.validation],
                    validation_y, test_features, test.labels, num_classes=num_classes,
                    knn_k=knn_k, knn_temperature=knn_temperature, weight_decays=weight_decays,
                    default_weight_decay=default_weight_decay, max_iter=max_iter,
                    preprocessing=preprocessing[name], folds=folds, seed=seed,
                    cross_validation_images=cross_validation_images,
                )
                _record(cells[name, protocol, budget], seed, value, detail, used[protocol])
                say(f"{budget_label(budget)} seed {seed} {name} {protocol}: {100 * value:.2f}")
        for (name, protocol), trainer in trained.items():
            model = trainer(train.subset(split.labeled), seed)
            predictions = model.predict(test.images).cpu()
            value = (predictions == test.labels).float().mean().item()
            detail = dict(getattr(model, "settings", {}))
            _record(cells[name, protocol, budget], seed, value, detail, used[protocol])
            say(f"{budget_label(budget)} seed {seed} {name} {protocol}: {100 * value:.2f}")

    all_split = splits.get((None, seeds[0]))
    settings: dict[str, Any] = {
        "train": train.name, "test": test.name,
        "train_images": len(train), "test_images": len(test), "num_classes": num_classes,
        "protocols": [*protocols, *(protocol for (name, protocol) in trained
                                    if protocol != "supervised")],
        "labels_per_class": budgets, "seeds": list(seeds),
        "all_budget_seed": seeds[0], "validation_per_class": validation_per_class,
        "labels_used": labels_used,
        "knn_k": knn_k, "knn_temperature": knn_temperature,
        "weight_decays": [float(d) for d in weight_decays],
        "default_weight_decay": default_weight_decay, "max_iter": max_iter,
        "weight_decay_selection": _selection_note(
            validation_per_class, folds, cross_validation_images, default_weight_decay),
        "cross_validation": {"max_folds": folds,
                             "folds_evaluated_until_validated": cross_validation_images,
                             "seed": "the split seed",
                             "folds_evaluated": _folds_evaluated(cells.values())},
        "probe_preprocessing": FeaturePreprocessing(probe_preprocessing).describe(),
        "representations": list(features),
        "supervised": supervised_name if supervised is not None else None,
        "finetune": finetune_name if finetune is not None else None,
        "semi": finetune_name if semi is not None else None,
    }
    if all_split is not None:
        settings["all_labels_per_class"] = len(all_split.labeled) / num_classes
    return Results(list(cells.values()), settings)


def _count(labels: torch.Tensor, num_classes: int) -> tuple[float, int]:
    """Labels per class (an int when every class present has as many, else their mean) and
    in total."""
    counts = torch.bincount(labels.long(), minlength=num_classes)
    present = counts[counts > 0]
    if len(present) == 0:
        return 0, 0
    per_class = int(present[0]) if bool((present == present[0]).all()) else (
        round(float(present.float().mean()), 2))
    return per_class, int(counts.sum())


def _folds_evaluated(cells: Iterable[Cell]) -> dict[str, list[str]]:
    """Per budget, how the probes chose their decay: "5 of 5 folds", "1 of 5 folds" (many
    labels: folds are fitted until enough images are validated), "default", "validation"."""
    evaluated: dict[str, list[str]] = {}
    for cell in cells:
        if cell.protocol != "linear":
            continue
        for detail in cell.details:
            how = (f"{detail['folds_evaluated']} of {detail['folds']} folds"
                   if detail["weight_decay_chosen_by"] == "cross-validation"
                   else detail["weight_decay_chosen_by"])
            seen = evaluated.setdefault(budget_label(cell.labels_per_class), [])
            if how not in seen:
                seen.append(how)
    return evaluated


def _selection_note(validation_per_class: int, folds: int, cross_validation_images: int,
                    default_weight_decay: float) -> str:
    """How the linear probe's weight decay is chosen, in one line for the settings."""
    if validation_per_class > 0:
        return (f"best accuracy on {validation_per_class} more labeled images per class, "
                "counted in the labels used")
    if folds < 2:
        return f"fixed at {default_weight_decay:g} (cross-validation turned off)"
    return (f"stratified cross-validation within the labeled images: min({folds}, smallest "
            "class count) folds seeded by the split seed, evaluated until "
            f"{cross_validation_images} images are validated; best mean accuracy (ties to the "
            f"larger decay), then refitted on all labeled images; {default_weight_decay:g} "
            "when a class has a single label")


def _run_protocol(
    protocol: str,
    labeled_x: torch.Tensor,
    labeled_y: torch.Tensor,
    validation_x: torch.Tensor,
    validation_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    *,
    num_classes: int,
    knn_k: int,
    knn_temperature: float,
    weight_decays: Sequence[float],
    default_weight_decay: float,
    max_iter: int,
    preprocessing: FeaturePreprocessing,
    folds: int,
    seed: int,
    cross_validation_images: int,
) -> tuple[float, dict[str, Any]]:
    """Test accuracy of one protocol on one split, and the per-seed details to record."""
    if protocol == "knn":
        value = knn_accuracy(
            labeled_x, labeled_y, test_x, test_y,
            num_classes=num_classes, k=knn_k, temperature=knn_temperature,
        )
        return value, {"k": min(knn_k, len(labeled_x))}
    probe = linear_probe(
        labeled_x, labeled_y, test_x, test_y, num_classes=num_classes,
        validation_features=validation_x, validation_labels=validation_y,
        weight_decays=weight_decays, default_weight_decay=default_weight_decay,
        max_iter=max_iter, preprocessing=preprocessing, folds=folds, seed=seed,
        cross_validation_images=cross_validation_images,
    )
    return probe.accuracy, probe_details(probe)


def probe_details(probe: ProbeResult) -> dict[str, Any]:
    """What a cell records of one probe: the decay, how it was chosen and on what evidence."""
    detail: dict[str, Any] = {
        "weight_decay": probe.weight_decay,
        "weight_decay_chosen_by": probe.chosen_by,
        "train_accuracy": probe.train_accuracy,
        "iterations": probe.iterations,
    }
    if probe.chosen_by == "cross-validation":
        detail["folds"] = probe.folds
        detail["folds_evaluated"] = probe.folds_evaluated
        detail["cross_validation_accuracy"] = probe.validation_accuracy
        # [decay, mean accuracy over the evaluated folds, [accuracy of each fold]]
        detail["cross_validation_accuracies"] = [
            [decay, accuracy, probe.fold_accuracies[decay]]
            for decay, accuracy in probe.validation_accuracies.items()
        ]
    elif probe.chosen_by == "validation":
        detail["validation_accuracy"] = probe.validation_accuracy
        detail["validation_accuracies"] = [[d, a] for d, a in probe.validation_accuracies.items()]
    else:
        detail["reason"] = probe.reason
    return detail


def _record(cell: Cell, seed: int, value: float, detail: dict[str, Any],
            labels_used: tuple[float, int]) -> None:
    cell.seeds.append(seed)
    cell.values.append(value)
    cell.details.append(detail)
    cell.labels_used_per_class, cell.labels_used = labels_used
