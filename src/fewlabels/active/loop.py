"""The real labelling loop, one call at a time: read the labels a person filled in, retrain,
propose the next batch (``fewlabels active next``).

Each call:

1. reads ``DIR/state.json`` (none yet: a new loop);
2. if a batch is waiting and its CSV is missing (a run stopped after the state was written),
   writes the CSV again from the state and stops: the person labels it first;
3. otherwise reads the filled CSV (every row checked, see
   :func:`~fewlabels.active.state.read_batch_labels`);
4. fits the calibrated probe on every label known (the CSVs' and the data's own class
   folders'), asks the strategy for the next batch among the images without a label, with
   the probe's guess and confidence for each;
5. writes the new state, then the new CSV (both atomically).

Before two classes have labels there is no classifier to ask: the first batch is the cold
start (one typical image per k-means cluster of the features), and a batch after labels of a
single class is chosen by greedy k-centre away from them.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fewlabels.active.classifier import fit_round_classifier
from fewlabels.active.cold_start import cold_start
from fewlabels.active.coreset import k_centre_greedy
from fewlabels.active.pool import FeatureSource, load_pool
from fewlabels.active.state import (
    ActiveState,
    PendingImage,
    read_batch_labels,
    write_batch_csv,
)
from fewlabels.active.strategies import QueryOptions, query, unlabeled_positions
from fewlabels.errors import UserError
from fewlabels.evaluate.linear_probe import FeaturePreprocessing

# The best strategy of bench/active_curves.py (docs/benchmarks.md, eighth session): after the
# cold start it reached with 100 labels what random selection needs 241 for, and kept within
# a point of margin sampling's best from 250 labels up.
DEFAULT_STRATEGY = "typiclust-then-margin"
_ROUND_STREAM = 104_729  # seeds of the rounds: seed * this + round


@dataclass
class NextBatch:
    """What a call did: the new state, the CSV to label (``None`` when every image has a
    label), whether the CSV was only written again after an interruption, and a summary."""

    state: ActiveState
    csv_path: Path | None
    rewritten: bool = False
    summary: dict[str, Any] = field(default_factory=dict)


def merged_class_names(*sources: Sequence[str]) -> list[str]:
    """Class names in order of first appearance, without repeats or blanks."""
    names: list[str] = []
    for source in sources:
        names += [name for name in (n.strip() for n in source) if name and name not in names]
    return names


def propose_next(
    directory: Path,
    *,
    spec: str,
    batch: int,
    source_for: Any,
    init: str | None = None,
    strategy: str | None = None,
    classes: Sequence[str] = (),
    seed: int = 0,
    options: QueryOptions | None = None,
    on_corrupt: str = "skip",
) -> NextBatch:
    """One call of the loop in ``directory`` (see the module docstring). ``source_for(init)``
    gives the :class:`FeatureSource` of a run (``None``: raw pixels); ``init`` and
    ``strategy`` given here replace the state's from now on (``None``: the state's, else raw
    pixels and :data:`DEFAULT_STRATEGY`), ``classes`` are added to its class names; ``seed``
    counts only when the loop starts."""
    state = ActiveState.load(directory)
    if state is not None and state.data != spec:
        raise UserError(f"{directory} holds the loop of {state.data}, not {spec}; give "
                        f"--data {state.data} or another --state")
    new_labels: dict[str, str] = {}
    if state is not None and state.pending:
        csv_path = directory / state.batch_file
        if not csv_path.exists():
            write_batch_csv(directory, state)
            return NextBatch(state, csv_path, rewritten=True)
        names = merged_class_names(state.class_names, classes)
        new_labels = read_batch_labels(csv_path, state.pending, names)

    init = init or (state.init if state else None)
    strategy = strategy or (state.strategy if state else DEFAULT_STRATEGY)
    source: FeatureSource = source_for(init)

    def check_classes(data_classes: list[str]) -> None:  # before the features are extracted
        known = merged_class_names(state.class_names if state else [], data_classes, classes)
        if len(known) < 2:
            raise UserError(f"{spec} names fewer than 2 classes; give the class names with "
                            "--classes NAME,NAME,...")

    pool, data_classes = load_pool(spec, source, on_corrupt, check_classes)
    class_names = merged_class_names(state.class_names if state else [], data_classes, classes)
    if state is None:
        state = ActiveState(data=spec, class_names=class_names, seed=seed)
    given = {**state.labels, **new_labels}
    known_ids = set(pool.ids)
    gone = [image_id for image_id in given if image_id not in known_ids]
    if gone:
        warnings.warn(f"{len(gone)} labeled images are no longer in {spec} (e.g. {gone[0]}); "
                      "their labels are kept but not used", stacklevel=2)
    labels = {**pool.data_labels, **{k: v for k, v in given.items() if k in known_ids}}
    labeled_ids = sorted(labels)  # a fixed order, whatever the pool's order
    labeled = pool.positions(labeled_ids)
    targets = torch.tensor([class_names.index(labels[i]) for i in labeled_ids],
                           dtype=torch.long)

    preprocessing = FeaturePreprocessing.fit(pool.features)
    prepared = preprocessing(pool.features)
    generator = torch.Generator().manual_seed(state.seed * _ROUND_STREAM + state.round + 1)
    classifier = None
    if targets.unique().numel() >= 2:
        classifier = fit_round_classifier(pool.features[labeled], targets,
                                          num_classes=len(class_names),
                                          preprocessing=preprocessing, seed=state.seed)
        picks = query(strategy, features=pool.features, labeled=labeled, batch=batch,
                      classifier=classifier, prepared=prepared, generator=generator,
                      options=options)
        chosen_by = strategy
    elif len(labeled) == 0:
        picks = cold_start(prepared, batch, generator=generator)
        chosen_by = "cold start"
    else:
        picks = k_centre_greedy(prepared, labeled, batch,
                                candidates=unlabeled_positions(len(prepared), labeled))
        chosen_by = "core-set (labels of one class only)"

    pending = [PendingImage(pool.ids[p], pool.paths[p]) for p in picks.tolist()]
    if classifier is not None and len(picks):
        confidences, guesses = classifier.probabilities(pool.features[picks]).max(dim=1)
        for image, guess, confidence in zip(pending, guesses.tolist(), confidences.tolist(),
                                            strict=True):
            image.guess, image.confidence = class_names[guess], confidence
    summary = {
        "round": state.round + 1, "labeled": len(labeled_ids),
        "classes_labeled": int(targets.unique().numel()), "pool": len(pool.ids),
        "asked": len(pending), "chosen_by": chosen_by, "features": source.description,
        "temperature": classifier.temperature if classifier else None,
        "cross_validated_accuracy": (classifier.probe.validation_accuracy
                                     if classifier else None),
    }
    state.class_names, state.init, state.strategy = class_names, init, strategy
    state.labels, state.pending = given, pending
    state.round += 1
    state.history.append(summary)
    state.save(directory)  # the commit point: the CSV below can always be made again from it
    csv_path = write_batch_csv(directory, state) if pending else None
    return NextBatch(state, csv_path, summary=summary)
