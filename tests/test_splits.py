"""make_split: seeded, stratified, disjoint, nested; errors a user can cause. stratified_folds:
stratified, disjoint, covering, seeded."""

import pytest
import torch

from fewlabels.data import Split, make_split
from fewlabels.data.splits import stratified_folds
from fewlabels.errors import UserError

# 3 classes x 20 images, in a scrambled but fixed order
LABELS = torch.tensor([(index * 7) % 3 for index in range(60)])


def as_set(indices: torch.Tensor) -> set[int]:
    return set(indices.tolist())


def test_same_seed_gives_same_split_and_other_seed_another():
    first = make_split(LABELS, 4, seed=3, validation_per_class=2)
    again = make_split(LABELS, 4, seed=3, validation_per_class=2)
    other = make_split(LABELS, 4, seed=4, validation_per_class=2)
    for name in ("labeled", "unlabeled", "validation"):
        assert torch.equal(getattr(first, name), getattr(again, name))
    assert not torch.equal(first.labeled, other.labeled)


def test_split_is_pinned_across_machines():
    # PCG64's stream is fixed by its specification: this must never change
    labels = torch.tensor([0, 1, 2] * 5)
    split = make_split(labels, 2, seed=0, validation_per_class=1)
    assert split.labeled.tolist() == [0, 4, 5, 7, 11, 12]
    assert split.unlabeled.tolist() == [1, 6, 8, 9, 13, 14]
    assert split.validation.tolist() == [2, 3, 10]


@pytest.mark.parametrize("labels_per_class", [1, 5, 18])
def test_exactly_k_labels_and_validation_images_per_class(labels_per_class):
    split = make_split(LABELS, labels_per_class, seed=0, validation_per_class=2)
    assert torch.bincount(LABELS[split.labeled], minlength=3).tolist() == [labels_per_class] * 3
    assert torch.bincount(LABELS[split.validation], minlength=3).tolist() == [2] * 3


def test_parts_are_disjoint_sorted_int64_and_cover_everything():
    split = make_split(LABELS, 5, seed=1, validation_per_class=3)
    parts = [split.labeled, split.unlabeled, split.validation]
    assert sum(len(part) for part in parts) == len(LABELS)
    assert set().union(*map(as_set, parts)) == set(range(len(LABELS)))
    for part in parts:
        assert part.dtype == torch.int64
        assert torch.equal(part, part.sort().values)


def test_all_labels_when_budget_is_none():
    split = make_split(LABELS, None, seed=0, validation_per_class=2)
    assert len(split.labeled) == len(LABELS) - 6 and len(split.unlabeled) == 0
    assert isinstance(split, Split)


def test_validation_does_not_depend_on_the_budget():
    validations = [make_split(LABELS, k, seed=5, validation_per_class=3).validation
                   for k in (1, 4, 10, None)]
    assert all(torch.equal(validations[0], other) for other in validations[1:])


def test_budgets_are_nested():
    labeled = [as_set(make_split(LABELS, k, seed=2, validation_per_class=2).labeled)
               for k in (1, 2, 5, 10)]
    assert all(smaller < larger for smaller, larger in zip(labeled, labeled[1:], strict=False))


def test_accepts_numpy_labels():
    split = make_split(LABELS.numpy(), 2, seed=0)
    assert torch.equal(split.labeled, make_split(LABELS, 2, seed=0).labeled)


@pytest.mark.parametrize(
    ("labels_per_class", "validation_per_class"),
    [(21, 0), (19, 2), (None, 20), (0, 0), (2, -1)],
)
def test_impossible_requests_are_user_errors(labels_per_class, validation_per_class):
    with pytest.raises(UserError):
        make_split(LABELS, labels_per_class, seed=0, validation_per_class=validation_per_class)


# --- stratified cross-validation folds -------------------------------------------------------

# 3 classes of 11, 7 and 5 images, in a scrambled but fixed order
UNEVEN = torch.tensor([0] * 11 + [1] * 7 + [2] * 5)[
    torch.randperm(23, generator=torch.Generator().manual_seed(0))]
PINNED_FOLDS = [[0, 1, 5, 9, 10, 11], [2, 3, 4, 6, 7, 8]]


@pytest.mark.parametrize("folds", [2, 3, 5])
def test_folds_are_stratified_disjoint_and_cover_the_labeled_set(folds):
    parts = stratified_folds(UNEVEN, folds, seed=0)
    assert len(parts) == folds
    assert sorted(sum((part.tolist() for part in parts), [])) == list(range(len(UNEVEN)))
    for part in parts:
        assert part.dtype == torch.int64 and torch.equal(part, part.sort().values)
    counts = torch.stack([torch.bincount(UNEVEN[part], minlength=3) for part in parts])
    for cls, total in enumerate((11, 7, 5)):  # every class spread as evenly as it can be
        assert set(counts[:, cls].tolist()) <= {total // folds, total // folds + 1}
        assert counts[:, cls].sum() == total
    sizes = [len(part) for part in parts]
    assert max(sizes) - min(sizes) <= 1


def test_folds_are_deterministic_for_a_seed_and_pinned():
    first = stratified_folds(UNEVEN, 5, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(first, stratified_folds(UNEVEN, 5, seed=3),
                                                 strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(first, stratified_folds(UNEVEN, 5, seed=4),
                                                     strict=True))
    # PCG64 and SeedSequence are fixed by their specifications: this must never change
    folds = stratified_folds(torch.tensor([0, 1, 2] * 4), 2, seed=0)
    assert [fold.tolist() for fold in folds] == PINNED_FOLDS


@pytest.mark.parametrize("folds", [1, 6])
def test_folds_need_enough_labels_of_every_class(folds):
    with pytest.raises(ValueError):
        stratified_folds(UNEVEN, folds, seed=0)  # 6 > 5 images of class 2
