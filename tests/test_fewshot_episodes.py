"""Few-shot building blocks against hand-computed numbers: the class split, episodes, the
95% interval and the nearest-class-mean rule."""

import math

import pytest
import torch

from fewlabels.data.imageset import ImageSet
from fewlabels.errors import UserError
from fewlabels.fewshot import (
    ClassSplit,
    EpisodeSampler,
    chosen_split,
    mean_and_interval,
    nearest_mean_accuracies,
    prototype_logits,
    sample_episodes,
    split_classes,
)
from fewlabels.fewshot.episodes import Episodes
from fewlabels.fewshot.prototypes import prototype_loss
from fewlabels.fewshot.task import base_part, novel_part

NAMES = [f"class{index}" for index in range(10)]


def test_class_split_is_seeded_disjoint_and_json_round_trips():
    split = split_classes(NAMES, seed=3)
    assert split == split_classes(NAMES, seed=3)
    assert set(split.base).isdisjoint(split.novel)
    assert sorted(split.base + split.novel) == list(range(10))
    assert len(split.novel) == 5 and list(split.novel) == sorted(split.novel)
    others = {split_classes(NAMES, seed=seed).novel for seed in range(10)}
    assert len(others) > 1
    assert ClassSplit.from_dict(split.to_dict()) == split
    # a CPU generator: these indices are the same on every machine (torch's Philox/MT on CPU)
    generator = torch.Generator().manual_seed(3)
    assert list(split.novel) == sorted(torch.randperm(10, generator=generator)[:5].tolist())


def test_chosen_split_takes_names_or_indices_and_refuses_unknown_ones():
    split = chosen_split(NAMES, ["class2", "7"])
    assert split.novel == (2, 7) and 2 not in split.base and len(split.base) == 8
    with pytest.raises(UserError, match="unknown class"):
        chosen_split(NAMES, ["cat"])
    with pytest.raises(UserError, match="novel-count"):
        split_classes(NAMES, novel_count=10)


def _labels(per_class: int = 12, classes: int = 10) -> torch.Tensor:
    # interleaved, so a class's members are not one contiguous block
    return torch.arange(classes).repeat(per_class)


def test_episodes_have_n_classes_k_support_q_query_disjoint_and_only_novel():
    labels = _labels()
    novel = (1, 3, 4, 8, 9)
    episodes = sample_episodes(labels, novel, ways=3, shots=2, queries=4, episodes=50, seed=0)
    assert episodes.classes.shape == (50, 3)
    assert episodes.support.shape == (50, 3, 2) and episodes.query.shape == (50, 3, 4)
    for episode in range(50):
        classes = episodes.classes[episode].tolist()
        assert len(set(classes)) == 3 and set(classes) <= set(novel)
        support = episodes.support[episode].flatten().tolist()
        query = episodes.query[episode].flatten().tolist()
        assert len(set(support)) == 6 and len(set(query)) == 12
        assert not set(support) & set(query)
        for way, label in enumerate(classes):
            assert (labels[episodes.support[episode, way]] == label).all()
            assert (labels[episodes.query[episode, way]] == label).all()
    # labels are positions in a random class order, not sorted class ids
    assert not all(row == sorted(row) for row in episodes.classes.tolist())
    assert episodes.support_labels().tolist() == [0, 0, 1, 1, 2, 2]
    assert episodes.query_labels().tolist() == [0] * 4 + [1] * 4 + [2] * 4


def test_same_seed_same_episodes_other_seed_other_episodes():
    labels = _labels()
    draw = dict(ways=5, shots=1, queries=3, episodes=20)
    first = sample_episodes(labels, range(10), seed=7, **draw)
    again = sample_episodes(labels, range(10), seed=7, **draw)
    other = sample_episodes(labels, range(10), seed=8, **draw)
    for table in ("classes", "support", "query"):
        assert torch.equal(getattr(first, table), getattr(again, table))
    assert first.fingerprint() == again.fingerprint() != other.fingerprint()
    assert not torch.equal(first.support, other.support)


def test_sampler_refuses_too_many_ways_or_images_in_one_line():
    labels = _labels(per_class=5)
    with pytest.raises(UserError, match="--ways 6 is more than the 5 novel classes"):
        EpisodeSampler(labels, range(5), 6, 1, 1)
    with pytest.raises(UserError, match=r"--shots 3 \+ --queries 3 is more than the 5"):
        EpisodeSampler(labels, range(5), 5, 3, 3)


def test_interval_is_1_96_population_std_over_root_n():
    accuracies = torch.tensor([0.2, 0.4, 0.6, 0.8])
    mean, interval = mean_and_interval(accuracies)
    population_std = math.sqrt(((0.3**2) * 2 + (0.1**2) * 2) / 4)
    assert mean == pytest.approx(0.5)
    assert interval == pytest.approx(1.96 * population_std / 2)
    assert mean_and_interval(torch.tensor([0.7]))[1] == 0.0


def test_prototype_logits_are_negative_squared_distances():
    query = torch.tensor([[0.0, 0.0], [3.0, 1.0]])
    means = torch.tensor([[1.0, 0.0], [2.0, 2.0]])
    expected = torch.tensor([[-1.0, -8.0], [-5.0, -2.0]])
    assert torch.allclose(prototype_logits(query, means), expected)


def test_nearest_mean_prediction_equals_the_hand_computed_class_mean():
    # 2-way 2-shot, 1 query per class, 2-d features
    features = torch.tensor([
        [0.0, 0.0], [2.0, 0.0],   # class A support: mean (1, 0)
        [0.0, 4.0], [0.0, 2.0],   # class B support: mean (0, 3)
        [1.0, 1.4],               # query of A: |.-(1,0)|² = 1.96, |.-(0,3)|² = 3.56 -> A
        [0.4, 1.6],               # query of B: 2.92 vs 2.12 -> B
    ])
    right = Episodes(torch.tensor([[0, 1]]), torch.tensor([[[0, 1], [2, 3]]]),
                     torch.tensor([[[4], [5]]]))
    assert nearest_mean_accuracies(features, right).tolist() == [1.0]
    # the same table with the query images swapped between classes: both wrong
    swapped = Episodes(right.classes, right.support, torch.tensor([[[5], [4]]]))
    assert nearest_mean_accuracies(features, swapped).tolist() == [0.0]
    # l2-normalised (a zero vector stays zero): means (0.5, 0) and (0, 1); the A query
    # (0.58, 0.81) is then nearer B's mean (0.37 against 0.67), the B query stays right
    assert nearest_mean_accuracies(features, right, "l2").tolist() == [0.5]


def test_prototype_loss_is_cross_entropy_of_negative_distances():
    support = torch.tensor([[[0.0], [2.0]], [[4.0], [4.0]]])  # means 1 and 4
    query = torch.tensor([[[1.0]], [[3.0]]])
    # query 1: logits (-0, -9); query 3: logits (-4, -1)
    expected = (math.log(1 + math.exp(-9)) + math.log(1 + math.exp(-3))) / 2
    assert prototype_loss(support, query).item() == pytest.approx(expected, rel=1e-5)


def test_base_part_has_only_base_classes_renumbered_and_novel_part_only_novel():
    labels = _labels(per_class=4)
    images = ImageSet(torch.zeros(len(labels), 1, 4, 4, dtype=torch.uint8), labels, NAMES)
    split = split_classes(NAMES, seed=0)
    base = base_part(images, split, per_class=3, seed=0)
    assert len(base) == 15 and sorted(set(base.labels.tolist())) == [0, 1, 2, 3, 4]
    assert base.class_names == [NAMES[index] for index in split.base]
    novel = novel_part(images, split)
    assert set(novel.labels.tolist()) == set(split.novel) and len(novel) == 20
