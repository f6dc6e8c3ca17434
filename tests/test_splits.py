"""make_split: seeded, stratified, disjoint, nested; errors a user can cause."""

import pytest
import torch

from fewlabels.data import Split, make_split
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
