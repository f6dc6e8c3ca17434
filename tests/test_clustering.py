"""k-means, the assignment solver and the clustering metrics, against hand-computed cases and
brute force."""

import importlib
import itertools
import math

import numpy as np
import pytest
import torch

from fewlabels.clustering import kmeans
from fewlabels.clustering.assignment import linear_sum_assignment
from fewlabels.clustering.kmeans import nearest_centroids
from fewlabels.clustering.metrics import (
    adjusted_rand_index,
    cluster_scores,
    clusters_in_use,
    contingency_table,
    hungarian_accuracy,
    match_clusters_to_classes,
    normalized_mutual_information,
    purity,
)
from fewlabels.errors import UserError

# the package exports the function under the module's name, so fetch the module itself
kmeans_module = importlib.import_module("fewlabels.clustering.kmeans")


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _blobs(per_blob: int = 40, dims: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Four blobs of spread 0.3 around centres 10 apart: separable by a wide margin."""
    generator = _generator(seed)
    centres = 10 * torch.eye(4, dims)
    labels = torch.arange(4).repeat_interleave(per_blob)
    points = centres[labels] + 0.3 * torch.randn(len(labels), dims, generator=generator)
    return points, labels


def _same_partition(assignments: torch.Tensor, labels: torch.Tensor) -> bool:
    """True when the two label vectors are equal up to renaming."""
    pairs = set(zip(assignments.tolist(), labels.tolist(), strict=True))
    return len(pairs) == len(set(labels.tolist())) == len(set(assignments.tolist()))


# -- k-means ---------------------------------------------------------------------------------

@pytest.mark.parametrize("init", ["k-means++", "random"])
def test_kmeans_recovers_separated_blobs(init):
    points, labels = _blobs()
    recovered = 0
    for seed in range(5):
        result = kmeans(points, 4, generator=_generator(seed), init=init)
        recovered += _same_partition(result.assignments, labels)
        # a fixed point of Lloyd's algorithm: centroids are the means of their points...
        for cluster in range(4):
            members = points[result.assignments == cluster]
            torch.testing.assert_close(result.centroids[cluster], members.mean(0))
        # ...and every point is assigned to its nearest centroid
        distances = torch.cdist(points, result.centroids)
        assert torch.equal(distances.argmin(1), result.assignments)
        expected = (points - result.centroids[result.assignments]).pow(2).sum().item()
        assert result.inertia == pytest.approx(expected, rel=1e-5)
    # k-means++ always finds the blobs; random seeding often starts two centres in one blob
    # (all four in different blobs has probability 4! 40^4 / (160 159 158 157), under 10%),
    # a local minimum Lloyd's algorithm cannot leave
    if init == "k-means++":
        assert recovered == 5


def test_kmeans_same_generator_seed_same_result():
    points = torch.randn(300, 8, generator=_generator(3))
    first = kmeans(points, 7, generator=_generator(11))
    again = kmeans(points, 7, generator=_generator(11))
    other = kmeans(points, 7, generator=_generator(12))
    assert torch.equal(first.assignments, again.assignments)
    assert torch.equal(first.centroids, again.centroids)
    assert first.inertia == again.inertia and first.iterations == again.iterations
    assert not torch.equal(first.centroids, other.centroids)


def test_an_empty_cluster_is_reassigned_and_ends_non_empty():
    points, labels = _blobs(per_blob=20)
    # the fifth centroid is far from every point: empty after the first assignment
    start = torch.cat([10 * torch.eye(4, 5), torch.full((1, 5), 100.0)])
    result = kmeans(points, 5, generator=_generator(0), init=start)
    assert result.reassigned >= 1
    sizes = result.cluster_sizes
    assert (sizes > 0).all() and sizes.sum() == len(points)
    # the new cluster was split off one blob: every cluster still lies within one blob
    for cluster in range(5):
        assert len(set(labels[result.assignments == cluster].tolist())) == 1


def test_coincident_points_still_fill_every_cluster():
    # two distinct points, ten copies each; three clusters must share them: seeding on
    # copies gives identical centroids, one of which stays empty until it is reassigned
    points = torch.cat([torch.zeros(10, 3), torch.ones(10, 3)])
    for seed in range(4):
        result = kmeans(points, 3, generator=_generator(seed), init="random")
        assert (result.cluster_sizes > 0).all()
        assert result.cluster_sizes.sum() == 20
        assert result.reassigned >= 1


def test_kmeans_refuses_more_clusters_than_points():
    with pytest.raises(UserError, match="between 1 and 5"):
        kmeans(torch.randn(5, 2), 6, generator=_generator(0))


def test_blocked_distances_equal_direct_ones(monkeypatch):
    # 7 clusters with a block of 16 elements: blocks of 2 rows, the last one short
    monkeypatch.setattr(kmeans_module, "_DISTANCE_BLOCK", 16)
    points = torch.randn(41, 6, generator=_generator(1), dtype=torch.float64)
    centroids = torch.randn(7, 6, generator=_generator(2), dtype=torch.float64)
    nearest, squared = nearest_centroids(points, centroids)
    direct = torch.cdist(points, centroids).pow(2)
    assert torch.equal(nearest, direct.argmin(1))
    torch.testing.assert_close(squared, direct.min(1).values)


# -- the assignment solver -------------------------------------------------------------------

def _brute_force_minimum(cost: np.ndarray) -> float:
    rows, columns = cost.shape
    if rows <= columns:
        return min(sum(cost[r, c] for r, c in enumerate(chosen))
                   for chosen in itertools.permutations(range(columns), rows))
    return _brute_force_minimum(cost.T)


@pytest.mark.parametrize("shape", [(1, 1), (1, 5), (5, 1), (3, 3), (4, 6), (6, 4), (5, 5),
                                   (7, 7), (3, 7), (7, 2)])
def test_assignment_equals_brute_force(shape):
    random = np.random.default_rng(sum(shape))
    for trial in range(6):
        # small integers make ties; floats make a unique optimum
        cost = (random.integers(0, 4, size=shape) if trial % 2 else
                random.normal(size=shape))
        rows, columns = linear_sum_assignment(cost)
        assert len(rows) == len(columns) == min(shape)
        assert len(set(rows.tolist())) == len(set(columns.tolist())) == min(shape)
        assert (np.diff(rows) > 0).all()
        assert cost[rows, columns].sum() == pytest.approx(_brute_force_minimum(cost), abs=1e-9)


def test_assignment_of_a_known_matrix():
    cost = np.array([[4, 1, 3], [2, 0, 5], [3, 2, 2]])
    rows, columns = linear_sum_assignment(cost)
    assert rows.tolist() == [0, 1, 2] and columns.tolist() == [1, 0, 2]  # 1 + 2 + 2 = 5


# -- metrics ---------------------------------------------------------------------------------

def test_a_perfect_clustering_scores_one_whatever_its_names():
    classes = [0, 0, 1, 1, 2, 2]
    for clusters in ([0, 0, 1, 1, 2, 2], [2, 2, 0, 0, 1, 1], [7, 7, 3, 3, 5, 5]):
        scores = cluster_scores(clusters, classes)
        assert (scores.nmi, scores.ari, scores.accuracy, scores.purity) == (1, 1, 1, 1)
        assert scores.clusters_in_use == 3
    assert match_clusters_to_classes([7, 7, 3, 3, 5, 5], classes) == {3: 1, 5: 2, 7: 0}


def test_the_six_point_textbook_case():
    classes = [0, 0, 0, 1, 1, 1]
    clusters = [0, 0, 1, 1, 2, 2]
    # contingency: cluster 0 = (2, 0), cluster 1 = (1, 1), cluster 2 = (0, 2); a = 2, 2, 2;
    # b = 3, 3; n = 6
    assert contingency_table(clusters, classes).tolist() == [[2, 0], [1, 1], [0, 2]]
    # ARI: sum C(n_ij, 2) = 1 + 1 = 2; sum C(a_i, 2) = 3; sum C(b_j, 2) = 6; C(6, 2) = 15;
    # expected = 3 * 6 / 15 = 1.2; maximum = (3 + 6) / 2 = 4.5; (2 - 1.2) / (4.5 - 1.2) = 8/33
    assert adjusted_rand_index(clusters, classes) == pytest.approx(8 / 33)
    # NMI: H(U) = ln 3, H(V) = ln 2; I = 2 * (1/3) ln((1/3) / (1/3 * 1/2)) = (2/3) ln 2 (the
    # mixed cluster contributes ln 1 = 0); NMI = (2/3) ln 2 / ((ln 3 + ln 2) / 2)
    expected_nmi = (2 / 3) * math.log(2) / ((math.log(3) + math.log(2)) / 2)
    assert normalized_mutual_information(clusters, classes) == pytest.approx(expected_nmi)
    assert expected_nmi == pytest.approx(0.5158, abs=1e-4)
    # one-to-one: cluster 0 -> class 0 (2), cluster 2 -> class 1 (2), cluster 1 unmatched
    assert hungarian_accuracy(clusters, classes) == pytest.approx(4 / 6)
    assert match_clusters_to_classes(clusters, classes) == {0: 0, 2: 1}
    # many-to-one: 2 + 1 + 2
    assert purity(clusters, classes) == pytest.approx(5 / 6)


def test_an_independent_clustering():
    # every cluster holds one point of each class: I = 0
    classes, clusters = [0, 0, 1, 1], [0, 1, 0, 1]
    assert normalized_mutual_information(clusters, classes) == 0
    # sum C(n_ij, 2) = 0; sum C(a_i, 2) = sum C(b_j, 2) = 2; expected = 2 * 2 / 6 = 2/3;
    # maximum = 2; ARI = (0 - 2/3) / (2 - 2/3) = -1/2: below chance
    assert adjusted_rand_index(clusters, classes) == pytest.approx(-0.5)
    assert hungarian_accuracy(clusters, classes) == 0.5


def test_ari_is_zero_in_expectation_over_random_relabellings():
    # ARI's correction is the expectation over all permutations of the points with the
    # cluster sizes fixed: averaged over all 720 orderings it is exactly 0
    classes = [0, 0, 0, 1, 1, 1]
    values = [adjusted_rand_index(list(order), classes)
              for order in itertools.permutations([0, 0, 1, 1, 2, 2])]
    assert np.mean(values) == pytest.approx(0, abs=1e-12)
    # and a large random clustering is near 0, with NMI near 0
    random = np.random.default_rng(0)
    clusters, labels = random.integers(0, 10, 20000), random.integers(0, 10, 20000)
    assert abs(adjusted_rand_index(clusters, labels)) < 0.005
    assert normalized_mutual_information(clusters, labels) < 0.01


def test_degenerate_clusterings():
    classes = [0, 1, 0, 1]
    # one cluster for everything: no information, ARI 0 (both = expected = 2), half matched
    scores = cluster_scores([5, 5, 5, 5], classes, num_clusters=10)
    assert (scores.nmi, scores.ari, scores.accuracy) == (0, 0, 0.5)
    assert (scores.clusters_in_use, scores.clusters) == (1, 10)
    # one class and one cluster: identical partitions
    assert normalized_mutual_information([0, 0], [1, 1]) == 1
    assert adjusted_rand_index([0, 0], [1, 1]) == 1
    assert clusters_in_use(torch.tensor([3, 3, 9])) == 2


def test_more_clusters_than_classes_leaves_clusters_unmatched():
    # 4 pure clusters of 2 classes: one-to-one matches two of them, purity all four
    classes = [0, 0, 0, 0, 1, 1, 1, 1]
    clusters = [0, 0, 1, 1, 2, 2, 3, 3]
    assert hungarian_accuracy(clusters, classes) == 0.5
    assert purity(clusters, classes) == 1
    assert normalized_mutual_information(clusters, classes) == pytest.approx(
        math.log(2) / ((math.log(4) + math.log(2)) / 2))
