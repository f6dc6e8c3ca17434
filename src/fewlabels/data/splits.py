"""Seeded, stratified splits of a labeled train part: k labels per class, the rest unlabeled,
and a held-out validation part; and stratified cross-validation folds of a labeled set.

The permutations come from NumPy's PCG64 generator, whose stream is fixed by its
specification, so the same seed gives the same split (and the same folds) on every machine
and every version.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fewlabels.errors import UserError


@dataclass(frozen=True)
class Split:
    """Index tensors (int64, sorted) into the train part; the three are disjoint."""

    labeled: torch.Tensor
    unlabeled: torch.Tensor
    validation: torch.Tensor


def make_split(
    labels: torch.Tensor,
    labels_per_class: int | None,
    seed: int,
    validation_per_class: int = 0,
) -> Split:
    """Choose ``validation_per_class`` images of every class for validation, then
    ``labels_per_class`` of the remaining ones as labeled (all of them when ``None``);
    everything else is unlabeled.

    The validation part depends only on ``seed`` and ``validation_per_class``, not on the
    budget, so budgets compared under one seed share their validation images, and the
    labeled set of a smaller budget is contained in that of a larger one.
    """
    labels_np = np.asarray(torch.as_tensor(labels).cpu(), dtype=np.int64)
    if labels_per_class is not None and labels_per_class < 1:
        raise UserError(f"labels per class must be at least 1, got {labels_per_class}")
    if validation_per_class < 0:
        raise UserError(
            f"validation images per class must be 0 or more, got {validation_per_class}")
    rng = np.random.Generator(np.random.PCG64(seed))
    order = rng.permutation(len(labels_np))
    labeled, unlabeled, validation = [], [], []
    for cls in np.unique(labels_np):
        members = order[labels_np[order] == cls]  # this class, in the seeded order
        available = len(members) - validation_per_class
        wanted = available if labels_per_class is None else labels_per_class
        if available < 1 or wanted > available:
            raise UserError(
                f"class {int(cls)} has {len(members)} images, too few for {wanted} labels "
                f"and {validation_per_class} validation images per class; "
                "ask for fewer labels per class"
            )
        validation.append(members[:validation_per_class])
        labeled.append(members[validation_per_class : validation_per_class + wanted])
        unlabeled.append(members[validation_per_class + wanted :])

    def as_tensor(parts: list[np.ndarray]) -> torch.Tensor:
        return torch.from_numpy(np.sort(np.concatenate(parts))).long()

    return Split(as_tensor(labeled), as_tensor(unlabeled), as_tensor(validation))


# Folds draw from their own stream of the seed, so that they are not a function of the
# permutation that chose the labeled images.
_FOLD_STREAM = 0x666F6C6473  # "folds"


def stratified_folds(labels: torch.Tensor, folds: int, seed: int) -> list[torch.Tensor]:
    """Split positions ``0..len(labels)-1`` into ``folds`` disjoint, stratified folds.

    Every class's members, in a seeded order, are dealt to the folds in turn, each class
    starting where the previous one stopped; so a class has ``n // folds`` or one more
    members in every fold, and the folds' sizes differ by at most one. Together the folds
    cover every position once. Each fold is a sorted int64 tensor. Used to choose a probe's
    hyperparameters inside a labeled set, with no labels beyond it.
    """
    labels_np = np.asarray(torch.as_tensor(labels).cpu(), dtype=np.int64)
    if folds < 2:
        raise ValueError(f"cross-validation needs at least 2 folds, got {folds}")
    counts = np.bincount(labels_np - labels_np.min()) if len(labels_np) else np.zeros(0)
    if len(labels_np) == 0 or counts[counts > 0].min() < folds:
        raise ValueError(f"stratified {folds}-fold cross-validation needs at least {folds} "
                         "labels of every class")
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence((seed, _FOLD_STREAM))))
    order = rng.permutation(len(labels_np))
    assignment = np.empty(len(labels_np), dtype=np.int64)
    dealt = 0
    for cls in np.unique(labels_np):
        members = order[labels_np[order] == cls]  # this class, in the seeded order
        assignment[members] = (dealt + np.arange(len(members))) % folds
        dealt += len(members)
    return [torch.from_numpy(np.flatnonzero(assignment == fold)).long() for fold in range(folds)]
