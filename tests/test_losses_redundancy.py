"""Barlow Twins and VICReg losses against values derived by hand, against the papers' code
written out independently, and their invariants."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fewlabels.losses import (
    barlow_twins_cross_correlation,
    barlow_twins_loss,
    barlow_twins_terms,
    vicreg_loss,
    vicreg_terms,
)

# Four images, two dimensions. Column by column:
#   z1[:, 0] = 0, 2, 4, 6   mean 3, deviations -3, -1, 1, 3 (sum of squares 20)
#   z1[:, 1] = 1, 1, -1, -1 mean 0, deviations  1, 1, -1, -1 (4)
#   z2[:, 0] = 1, 0, 0, 1   mean 1/2, deviations  1/2, -1/2, -1/2, 1/2 (1)
#   z2[:, 1] = 0, 0, 1, 1   mean 1/2, deviations -1/2, -1/2, 1/2, 1/2 (1)
Z1 = torch.tensor([[0.0, 1.0], [2.0, 1.0], [4.0, -1.0], [6.0, -1.0]])
Z2 = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0], [1.0, 1.0]])


def test_barlow_twins_by_hand():
    # Batch-normalised (biased variance, eps 0): a = (-3,-1,1,3)/sqrt(5), b = (1,1,-1,-1),
    # c = (1,-1,-1,1), d = (-1,-1,1,1). C = [[a.c, a.d], [b.c, b.d]] / 4
    #   = [[0, 8/(4 sqrt 5)], [0, -4/4]] = [[0, 2/sqrt 5], [0, -1]].
    correlation = barlow_twins_cross_correlation(Z1, Z2, eps=0.0)
    expected = torch.tensor([[0.0, 2 / math.sqrt(5)], [0.0, -1.0]])
    torch.testing.assert_close(correlation, expected)
    # on-diagonal (1 - 0)^2 + (1 + 1)^2 = 5; off-diagonal (2/sqrt 5)^2 + 0 = 4/5
    on_diagonal, off_diagonal = barlow_twins_terms(Z1, Z2, eps=0.0)
    assert on_diagonal.item() == pytest.approx(5.0, abs=1e-6)
    assert off_diagonal.item() == pytest.approx(0.8, abs=1e-6)
    loss = barlow_twins_loss(Z1, Z2, off_diagonal_weight=0.5, eps=0.0)
    assert loss.item() == pytest.approx(5.4, abs=1e-6)


def _hadamard_columns() -> torch.Tensor:
    """Three columns of the 4 x 4 Hadamard matrix: mean 0, biased variance 1, orthogonal."""
    return torch.tensor([[1.0, 1.0, 1.0], [-1.0, 1.0, -1.0], [1.0, -1.0, -1.0],
                         [-1.0, -1.0, 1.0]])


def test_barlow_twins_is_zero_for_identical_decorrelated_views_of_any_scale_and_shift():
    z = _hadamard_columns() * torch.tensor([3.0, 0.5, 7.0]) + torch.tensor([10.0, -2.0, 0.0])
    assert barlow_twins_loss(z, z.clone(), eps=0.0).item() == pytest.approx(0.0, abs=1e-6)
    # with batch norm's eps the diagonal is var / (var + eps): (1 - C_ii)^2 ~ (eps / var)^2
    assert barlow_twins_loss(z, z.clone()).item() < 1e-8
    # correlated dimensions (a column repeated) are penalised by the off-diagonal term only
    repeated = torch.cat([z, z[:, :1]], dim=1)
    on_diagonal, off_diagonal = barlow_twins_terms(repeated, repeated, eps=0.0)
    assert on_diagonal.item() == pytest.approx(0.0, abs=1e-6)
    assert off_diagonal.item() == pytest.approx(2.0, abs=1e-6)  # C_03 = C_30 = 1


def _official_barlow_twins(z1: torch.Tensor, z2: torch.Tensor, weight: float) -> torch.Tensor:
    """The official code's formulation: BatchNorm1d without affine, c = bn(z1).T bn(z2) / N,
    the off-diagonal through the flatten-and-view trick."""
    norm = nn.BatchNorm1d(z1.shape[1], affine=False).train()
    c = norm(z1).T @ norm(z2) / z1.shape[0]
    n = c.shape[0]
    off = c.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()
    return (torch.diagonal(c) - 1).pow(2).sum() + weight * off.pow(2).sum()


def _official_vicreg(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The official code's formulation, weights 25, 25, 1."""
    repr_loss = F.mse_loss(x, y)
    x, y = x - x.mean(dim=0), y - y.mean(dim=0)
    std_x, std_y = torch.sqrt(x.var(dim=0) + 1e-4), torch.sqrt(y.var(dim=0) + 1e-4)
    std_loss = torch.mean(F.relu(1 - std_x)) / 2 + torch.mean(F.relu(1 - std_y)) / 2
    n, d = x.shape
    cov_x, cov_y = x.T @ x / (n - 1), y.T @ y / (n - 1)

    def off(m):
        return m.flatten()[:-1].view(d - 1, d + 1)[:, 1:].flatten()

    cov_loss = off(cov_x).pow(2).sum() / d + off(cov_y).pow(2).sum() / d
    return 25 * repr_loss + 25 * std_loss + cov_loss


@pytest.mark.parametrize("name", ["barlow_twins", "vicreg"])
def test_losses_and_gradients_equal_the_official_formulation(name):
    generator = torch.Generator().manual_seed(0)
    base = torch.randn(12, 6, generator=generator)
    # VICReg at a scale where some dimensions are below the margin and some above
    scales = torch.tensor([0.3, 0.6, 0.9, 1.2, 2.0, 3.0])
    inputs = [(base * scales + 0.3 * torch.randn(12, 6, generator=generator))
              .requires_grad_() for _ in range(2)]
    ours, official = {"barlow_twins": (lambda a, b: barlow_twins_loss(a, b, 0.01),
                                       lambda a, b: _official_barlow_twins(a, b, 0.01)),
                      "vicreg": (vicreg_loss, _official_vicreg)}[name]
    value = ours(*inputs)
    gradients = torch.autograd.grad(value, inputs)
    expected = official(*inputs)
    expected_gradients = torch.autograd.grad(expected, inputs)
    torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-5)
    for mine, theirs in zip(gradients, expected_gradients, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-6)


def test_barlow_twins_swapping_the_views_transposes_the_correlation():
    generator = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(10, 5, generator=generator), torch.randn(10, 5, generator=generator)
    torch.testing.assert_close(barlow_twins_cross_correlation(z2, z1),
                               barlow_twins_cross_correlation(z1, z2).T)
    assert barlow_twins_loss(z1, z2).item() == pytest.approx(barlow_twins_loss(z2, z1).item())


def test_vicreg_by_hand():
    # invariance: squared differences (1,1), (4,1), (16,4), (25,4): 56 / 8 = 7
    # unbiased variances: z1 20/3 and 4/3 (std above 1: no hinge), z2 1/3 and 1/3:
    #   v(z2) = 1 - sqrt(1/3) on both dimensions, v = (0 + v(z2)) / 2
    # covariances: z1 (-3-1-1-3)/3 = -8/3, so c(z1) = 2 (8/3)^2 / 2 = 64/9; z2: 0
    invariance, variance, covariance = vicreg_terms(Z1, Z2, eps=0.0)
    assert invariance.item() == pytest.approx(7.0, abs=1e-6)
    assert variance.item() == pytest.approx((1 - math.sqrt(1 / 3)) / 2, abs=1e-6)
    assert covariance.item() == pytest.approx(64 / 9, abs=1e-5)
    expected = 25 * 7 + 25 * (1 - math.sqrt(1 / 3)) / 2 + 64 / 9
    assert vicreg_loss(Z1, Z2, eps=0.0).item() == pytest.approx(expected, abs=1e-4)
    weighted = vicreg_loss(Z1, Z2, invariance_weight=1, variance_weight=2,
                           covariance_weight=3, eps=0.0)
    assert weighted.item() == pytest.approx(7 + (1 - math.sqrt(1 / 3)) + 64 / 3, abs=1e-4)


def test_vicreg_variance_term_is_zero_when_every_std_reaches_the_target():
    z = _hadamard_columns() * torch.tensor([1.0, 2.0, 5.0])  # unbiased std >= sqrt(4/3) > 1
    z.requires_grad_()
    terms = vicreg_terms(z, z.detach().clone())
    assert terms.variance.item() == 0.0 and terms.invariance.item() == 0.0
    assert terms.covariance.item() == pytest.approx(0.0, abs=1e-10)  # orthogonal columns
    # nothing to push: no gradient at all
    gradient, = torch.autograd.grad(vicreg_loss(z, z.detach().clone()), [z])
    assert gradient.abs().max().item() < 1e-5
    # a larger target hinges: gamma = 2 penalises the first two dimensions of each view
    std = (torch.tensor([4 / 3, 16 / 3, 100 / 3]) + 1e-4).sqrt()
    expected = F.relu(2.0 - std).mean().item()  # the same for both views: (v + v) / 2 = v
    assert vicreg_terms(z, z, variance_target=2.0).variance.item() == pytest.approx(expected)


def test_vicreg_on_a_collapsed_batch_is_the_full_variance_penalty():
    z = torch.ones(8, 4)
    terms = vicreg_terms(z, z)
    assert terms.variance.item() == pytest.approx(1 - math.sqrt(1e-4))
    assert terms.invariance.item() == 0.0 and terms.covariance.item() == 0.0


def test_the_losses_refuse_mismatched_embeddings():
    with pytest.raises(ValueError, match="same shape"):
        barlow_twins_loss(torch.zeros(4, 3), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="same shape"):
        vicreg_loss(torch.zeros(4, 3, 1), torch.zeros(4, 3, 1))


def test_the_statistics_stay_in_float32_under_autocast():
    generator = torch.Generator().manual_seed(2)
    z1, z2 = torch.randn(16, 8, generator=generator), torch.randn(16, 8, generator=generator)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = barlow_twins_loss(z1, z2), vicreg_loss(z1, z2)
    for value, exact in zip(under_autocast, (barlow_twins_loss(z1, z2), vicreg_loss(z1, z2)),
                            strict=True):
        assert value.dtype == torch.float32
        torch.testing.assert_close(value, exact)
