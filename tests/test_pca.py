"""PCA-whitening (DeepCluster's preprocessing): a closed-form case, identity covariance on
random correlated data, the kept dimension, unit rows, a fixed eigenvector sign, and the
balanced rounding of a transport plan into hard labels (SeLa)."""

import math

import pytest
import torch

from fewlabels.clustering.balanced_labels import balanced_hard_labels, equal_cluster_sizes
from fewlabels.clustering.pca import fit_pca_whitening, pca_whiten_normalize


def _correlated(count=500, width=6, seed=0):
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.randn(width, width, generator=generator)
    return torch.randn(count, width, generator=generator) @ mixing + 3.0


def test_closed_form_on_points_along_rotated_axes():
    # four points on the axes of a frame rotated by 45 degrees, centred at (1, 2): covariance
    # 4.5 along u = (1, 1)/sqrt2 and 0.5 along v = (-1, 1)/sqrt2
    u = torch.tensor([1.0, 1.0]) / math.sqrt(2)
    v = torch.tensor([-1.0, 1.0]) / math.sqrt(2)
    centre = torch.tensor([1.0, 2.0])
    points = torch.stack([centre + 3 * u, centre - 3 * u, centre + v, centre - v])
    whitening = fit_pca_whitening(points, eps=0.0)
    torch.testing.assert_close(whitening.mean, centre)
    torch.testing.assert_close(whitening.eigenvalues, torch.tensor([4.5, 0.5]))
    torch.testing.assert_close(whitening.components[:, 0].abs(), u.abs())
    out = whitening(points)
    # 3 / sqrt(4.5) = sqrt(2) along the first component, 1 / sqrt(0.5) = sqrt(2) along the second
    expected = math.sqrt(2)
    torch.testing.assert_close(out.abs(), torch.tensor(
        [[expected, 0.0], [expected, 0.0], [0.0, expected], [0.0, expected]]),
        atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dim", [None, 6, 3, 1, 50])
def test_whitened_features_have_identity_covariance_and_the_kept_dimension(dim):
    features = _correlated()
    whitening = fit_pca_whitening(features, dim, eps=0.0)
    kept = 6 if dim is None else min(dim, 6)
    assert whitening.dim == kept
    out = whitening(features)
    assert out.shape == (500, kept) and out.dtype == torch.float32
    centred = out - out.mean(0)
    covariance = centred.T @ centred / len(out)
    torch.testing.assert_close(out.mean(0), torch.zeros(kept), atol=1e-4, rtol=0)
    torch.testing.assert_close(covariance, torch.eye(kept), atol=1e-4, rtol=0)
    # eigenvalues in decreasing order, orthonormal components
    assert bool((whitening.eigenvalues[:-1] >= whitening.eigenvalues[1:]).all())
    torch.testing.assert_close(whitening.components.T @ whitening.components, torch.eye(kept),
                               atol=1e-5, rtol=0)


def test_the_kept_directions_are_the_largest_variance_ones():
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(400, 4, generator=generator) * torch.tensor([0.1, 5.0, 0.2, 2.0])
    whitening = fit_pca_whitening(features, 2)
    # the two kept directions are axes 1 and 3, in that order
    assert whitening.components[:, 0].abs().argmax() == 1
    assert whitening.components[:, 1].abs().argmax() == 3
    for column in range(2):
        largest = whitening.components[:, column].abs().argmax()
        assert whitening.components[largest, column] > 0  # the fixed sign


def test_normalised_rows_and_dead_directions():
    features = _correlated(count=200, width=5)
    features = torch.cat([features, torch.zeros(200, 3)], dim=1)  # three dead channels
    out = pca_whiten_normalize(features, 8)
    assert out.shape == (200, 8) and torch.isfinite(out).all()
    torch.testing.assert_close(out.norm(dim=1), torch.ones(200))


def test_equal_cluster_sizes():
    assert equal_cluster_sizes(12, 4).tolist() == [3, 3, 3, 3]
    assert equal_cluster_sizes(14, 4).tolist() == [4, 4, 3, 3]


def test_balanced_rounding_by_hand():
    plan = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    # cluster 0 is every image's best but the third's; it keeps its two strongest (0.9, 0.8)
    # and the fourth image moves to its next choice
    assert balanced_hard_labels(plan).tolist() == [0, 0, 1, 1]
    assert balanced_hard_labels(plan, torch.tensor([3, 1])).tolist() == [0, 0, 1, 0]


def test_balanced_rounding_meets_the_sizes_and_keeps_arg_max_where_it_can():
    generator = torch.Generator().manual_seed(0)
    plan = torch.rand(60, 6, generator=generator)
    plan[:, 2] += 1.0  # every image prefers cluster 2
    labels = balanced_hard_labels(plan)
    assert torch.bincount(labels, minlength=6).tolist() == [10] * 6
    # cluster 2 kept the ten images with the largest values in its column
    members = (labels == 2).nonzero().flatten()
    assert set(members.tolist()) == set(plan[:, 2].topk(10).indices.tolist())
    # a plan that is already balanced keeps its arg-max
    balanced = torch.eye(6).repeat(10, 1) + 0.01 * torch.rand(60, 6, generator=generator)
    torch.testing.assert_close(balanced_hard_labels(balanced), balanced.argmax(1))
