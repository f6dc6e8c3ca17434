"""Label-efficiency curves: accuracy as a function of the number of labels per class.

For every budget of labels per class and every split seed, :func:`make_split` chooses the
labeled images (for fitting) and a validation part (for choosing the linear probe's weight
decay, never fitted); each protocol then runs on each representation's features, extracted
once for the whole train and test parts. The probe standardises features with the statistics
of the whole train part (no labels involved), which is far less noisy than those of 10
labeled images. The "all labels" budget is a single split (it does
not depend on the seed except for which images are held out for validation), so it runs with
the first seed only. Each cell reports the mean and sample std over seeds.
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
    DEFAULT_MAX_ITER,
    DEFAULT_WEIGHT_DECAY,
    DEFAULT_WEIGHT_DECAYS,
    feature_statistics,
    linear_probe,
)
from fewlabels.evaluate.table import Cell, Results, budget_label

PROTOCOLS = ("knn", "linear")
DEFAULT_BUDGETS: tuple[int | None, ...] = (1, 10, 100, None)
DEFAULT_SEEDS = (0, 1, 2)
DEFAULT_VALIDATION_PER_CLASS = 10

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
    supervised: SupervisedTrainer | None = None,
    supervised_name: str = "scratch",
    log: Callable[[str], None] | None = None,
) -> Results:
    """Run ``protocols`` ("knn", "linear") on every representation at every budget and seed.

    ``representations`` maps a name to a :class:`FeatureProvider` (called once with the train
    and once with the test part) or to precomputed ``(train_features, test_features)``.
    ``labels_per_class`` holds budgets, ``None`` meaning all labels. ``supervised(labeled,
    seed)``, when given, trains a model from scratch on the labeled images of each split; it
    becomes the row (``supervised_name``, "supervised"). A budget larger than a class allows
    raises :class:`UserError` (from :func:`make_split`) before any work is done.
    """
    _check(train, test, protocols, seeds)
    assert train.labels is not None and test.labels is not None
    say = log or (lambda message: None)
    num_classes = max(train.num_classes, int(train.labels.max()) + 1, int(test.labels.max()) + 1)
    budgets = list(dict.fromkeys(labels_per_class))
    splits: dict[tuple[int | None, int], Split] = {}
    for budget in budgets:
        for seed in seeds if budget is not None else seeds[:1]:
            splits[budget, seed] = make_split(train.labels, budget, seed, validation_per_class)

    features, train_statistics = {}, {}
    for name, representation in representations.items():
        say(f"features: {name}")
        features[name] = _features(name, representation, train, test)
        train_statistics[name] = feature_statistics(features[name][0])

    cells: dict[tuple[str, str, int | None], Cell] = {}
    row_keys = [(name, protocol) for name in features for protocol in protocols]
    if supervised is not None:
        row_keys.append((supervised_name, "supervised"))
    for budget in budgets:
        for name, protocol in row_keys:
            cells[name, protocol, budget] = Cell(name, protocol, budget)

    for (budget, seed), split in splits.items():
        labeled_y = train.labels[split.labeled]
        validation_y = train.labels[split.validation]
        for name, (train_features, test_features) in features.items():
            labeled_x = train_features[split.labeled]
            statistics = train_statistics[name]
            for protocol in protocols:
                value, detail = _run_protocol(
                    protocol, labeled_x, labeled_y, train_features[split.validation],
                    validation_y, test_features, test.labels, num_classes=num_classes,
                    knn_k=knn_k, knn_temperature=knn_temperature, weight_decays=weight_decays,
                    default_weight_decay=default_weight_decay, max_iter=max_iter,
                    statistics=statistics,
                )
                _record(cells[name, protocol, budget], seed, value, detail)
                say(f"{budget_label(budget)} seed {seed} {name} {protocol}: {100 * value:.2f}")
        if supervised is not None:
            model = supervised(train.subset(split.labeled), seed)
            predictions = model.predict(test.images).cpu()
            value = (predictions == test.labels).float().mean().item()
            detail = dict(getattr(model, "settings", {}))
            _record(cells[supervised_name, "supervised", budget], seed, value, detail)
            say(f"{budget_label(budget)} seed {seed} {supervised_name}: {100 * value:.2f}")

    all_split = splits.get((None, seeds[0]))
    settings: dict[str, Any] = {
        "train": train.name, "test": test.name,
        "train_images": len(train), "test_images": len(test), "num_classes": num_classes,
        "protocols": list(protocols), "labels_per_class": budgets, "seeds": list(seeds),
        "all_budget_seed": seeds[0], "validation_per_class": validation_per_class,
        "knn_k": knn_k, "knn_temperature": knn_temperature,
        "weight_decays": [float(d) for d in weight_decays],
        "default_weight_decay": default_weight_decay, "max_iter": max_iter,
        "probe_standardisation": "statistics of all train-part features",
        "representations": list(features),
        "supervised": supervised_name if supervised is not None else None,
    }
    if all_split is not None:
        settings["all_labels_per_class"] = len(all_split.labeled) / num_classes
    return Results(list(cells.values()), settings)


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
    statistics: tuple[torch.Tensor, torch.Tensor],
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
        max_iter=max_iter, statistics=statistics,
    )
    return probe.accuracy, {
        "weight_decay": probe.weight_decay,
        "train_accuracy": probe.train_accuracy,
        "validation_accuracy": probe.validation_accuracy,
        "validation_accuracies": [[d, a] for d, a in probe.validation_accuracies.items()],
        "iterations": probe.iterations,
    }


def _record(cell: Cell, seed: int, value: float, detail: dict[str, Any]) -> None:
    cell.seeds.append(seed)
    cell.values.append(value)
    cell.details.append(detail)
