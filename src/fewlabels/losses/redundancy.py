r"""Redundancy-reduction objectives: Barlow Twins and VICReg.

Both look at the statistics of a batch of embeddings of two views, dimension by dimension:
Barlow Twins drives the cross-correlation matrix of the two views towards the identity,
VICReg keeps every dimension's standard deviation above a margin, decorrelates the
dimensions of each view and pulls the two views together. Neither needs negatives, a
momentum teacher or a predictor; collapse to a constant is what the statistics rule out.

**Across devices.** The statistics are those of the global batch: every device all-reduces
the sums it needs (the per-dimension sums, then the products of the centred embeddings) with
:func:`fewlabels.distributed.all_reduce_sum_with_gradient`, whose backward sums the gradient
over the devices. Each device then computes the same global loss, and DDP's average of the
parameter gradients gives exactly the gradient of one process on the global batch. A plain
``torch.distributed.all_reduce`` in the forward pass (no autograd) would leave each device
only its own share of the gradient: 1/world_size of it after DDP's average, the bug of
lightly-ai/lightly#1977, which ``tests/test_method_barlow_vicreg.py`` shows the 2-process
comparison catching. The sums cost two all-reduces per step: ``[2D + 1]`` and about ``[D, D]``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from fewlabels.distributed import all_reduce_sum_with_gradient


def _check_pair(z1: torch.Tensor, z2: torch.Tensor) -> None:
    if z1.dim() != 2 or z1.shape != z2.shape:
        raise ValueError(f"expected two embeddings [n, D] of the same shape, got "
                         f"{tuple(z1.shape)} and {tuple(z2.shape)}")


def _centred_over_global_batch(
    z1: torch.Tensor, z2: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Both views minus their means over the global batch, in float32, and the global batch
    size N (a float tensor). One all-reduce of ``[sum z1, sum z2, n]``: the count rides along
    (its gradient is discarded), so unequal local batches are handled exactly."""
    z1, z2 = z1.float(), z2.float()  # statistics in float32, also under autocast
    local = torch.cat([z1.sum(dim=0), z2.sum(dim=0), z1.new_tensor([z1.shape[0]])])  # [2D+1]
    totals = all_reduce_sum_with_gradient(local)
    dim = z1.shape[1]
    count = totals[-1].detach()
    mean1, mean2 = totals[:dim] / count, totals[dim:2 * dim] / count  # [D] each
    return z1 - mean1, z2 - mean2, count


def _off_diagonal(matrices: torch.Tensor) -> torch.Tensor:
    """``[..., D, D]`` with the diagonal set to 0 (a mask, not a subtraction of the squared
    diagonal, so nothing cancels)."""
    dim = matrices.shape[-1]
    diagonal = torch.eye(dim, dtype=torch.bool, device=matrices.device)
    return matrices.masked_fill(diagonal, 0.0)


class BarlowTwinsTerms(NamedTuple):
    """The two sums of the Barlow Twins loss, before the off-diagonal weight."""

    on_diagonal: torch.Tensor  # invariance: sum_i (1 - C_ii)^2
    off_diagonal: torch.Tensor  # redundancy reduction: sum_{i != j} C_ij^2


def barlow_twins_cross_correlation(
    z1: torch.Tensor, z2: torch.Tensor, eps: float = 1e-5
) -> torch.Tensor:
    r"""The cross-correlation matrix ``C`` ``[D, D]`` of Barlow Twins over the global batch.

    Each view is batch-normalised along the batch without affine parameters, as
    ``nn.BatchNorm1d(D, affine=False)`` in training mode does (biased variance, ``eps``
    added to it), with the mean and variance of the global batch:
    :math:`\hat z_{b,i} = (z_{b,i} - \mu_i) / \sqrt{\sigma_i^2 + \epsilon}`, and
    :math:`C_{ij} = \frac{1}{N} \sum_b \hat z^A_{b,i} \hat z^B_{b,j}`. Computed as
    :math:`C_{ij} = P_{ij} / (N s^A_i s^B_j)` from the all-reduced products of the centred
    embeddings :math:`P = \sum_b (z^A_b - \mu^A)(z^B_b - \mu^B)^\top` and their squares.
    """
    _check_pair(z1, z2)
    with torch.autocast(device_type=z1.device.type, enabled=False):  # float32 products
        return _cross_correlation(z1, z2, eps)


def _cross_correlation(z1: torch.Tensor, z2: torch.Tensor, eps: float) -> torch.Tensor:
    centred1, centred2, count = _centred_over_global_batch(z1, z2)
    local = torch.cat([centred1.T @ centred2,  # [D, D]: sum over the local images
                       centred1.square().sum(dim=0, keepdim=True),  # [1, D]
                       centred2.square().sum(dim=0, keepdim=True)])  # [1, D]
    totals = all_reduce_sum_with_gradient(local)  # [D + 2, D]
    dim = z1.shape[1]
    products, squares1, squares2 = totals[:dim], totals[dim], totals[dim + 1]
    scale1 = (squares1 / count + eps).rsqrt()  # [D]: 1 / sqrt(biased variance + eps)
    scale2 = (squares2 / count + eps).rsqrt()
    return products * scale1[:, None] * scale2[None, :] / count  # [D, D]


def barlow_twins_terms(z1: torch.Tensor, z2: torch.Tensor, eps: float = 1e-5
                       ) -> BarlowTwinsTerms:
    """The on-diagonal and off-diagonal sums of :func:`barlow_twins_loss`."""
    correlation = barlow_twins_cross_correlation(z1, z2, eps)
    diagonal = torch.diagonal(correlation)
    on_diagonal = (1.0 - diagonal).square().sum()
    off_diagonal = _off_diagonal(correlation).square().sum()
    return BarlowTwinsTerms(on_diagonal, off_diagonal)


def barlow_twins_loss(
    z1: torch.Tensor, z2: torch.Tensor, off_diagonal_weight: float = 5e-3, eps: float = 1e-5
) -> torch.Tensor:
    r"""The Barlow Twins loss: the cross-correlation of two views towards the identity.

    Zbontar, Jing, Misra, LeCun, Deny, "Barlow Twins: Self-Supervised Learning via
    Redundancy Reduction", ICML 2021, eqs. (1)-(2). With :math:`C` the cross-correlation
    matrix of the batch-normalised embeddings of the two views over the batch
    (:func:`barlow_twins_cross_correlation`),

    .. math::

        \mathcal{L}_{BT} = \sum_i (1 - C_{ii})^2
                           + \lambda \sum_i \sum_{j \ne i} C_{ij}^2 ,

    :math:`\lambda` = ``off_diagonal_weight`` (the paper's 5e-3; the official code's
    default is 0.0051). Not scaled: this is the paper's loss and the current official code's.
    The first release of the official code multiplied it by 1/32 (``--scale-loss``),
    which with LARS matters only for the parameters LARS does not adapt (biases and norms)
    and for the balance with weight decay; the later release instead gave biases and norms a
    40 times smaller learning rate. Methods that want that scale multiply the result.

    0 exactly when :math:`C = I` (identical views whose dimensions are decorrelated), up to
    ``eps``: the variance used to normalise is :math:`\sigma^2 + \epsilon`. Over the global
    batch when running distributed, with exact gradients (see the module docstring): every
    device returns the same value.

    Args:
        z1, z2: ``[n, D]`` projections of the first and second view (before normalisation).
        off_diagonal_weight: :math:`\lambda`.
        eps: added to the variance, as ``nn.BatchNorm1d``'s default.

    Example::

        loss = barlow_twins_loss(projector(backbone(view1)), projector(backbone(view2)))
    """
    terms = barlow_twins_terms(z1, z2, eps)
    return terms.on_diagonal + off_diagonal_weight * terms.off_diagonal


class VICRegTerms(NamedTuple):
    """The three terms of the VICReg loss, before their weights."""

    invariance: torch.Tensor  # s(Z, Z'): mean squared error between the views
    variance: torch.Tensor  # (v(Z) + v(Z')) / 2: hinge on each dimension's std
    covariance: torch.Tensor  # c(Z) + c(Z'): squared off-diagonal covariances / D


def vicreg_terms(z1: torch.Tensor, z2: torch.Tensor, variance_target: float = 1.0,
                 eps: float = 1e-4) -> VICRegTerms:
    """The invariance, variance and covariance terms of :func:`vicreg_loss`."""
    _check_pair(z1, z2)
    with torch.autocast(device_type=z1.device.type, enabled=False):  # float32 statistics
        return _vicreg_terms(z1, z2, variance_target, eps)


def _vicreg_terms(z1: torch.Tensor, z2: torch.Tensor, variance_target: float,
                  eps: float) -> VICRegTerms:
    # Invariance is local: DDP's average of the devices' means is the global mean when the
    # local batches are equal, as the official code computes it before gathering.
    invariance = F.mse_loss(z1.float(), z2.float())
    centred1, centred2, count = _centred_over_global_batch(z1, z2)
    local = torch.stack([centred1.T @ centred1, centred2.T @ centred2])  # [2, D, D]
    covariances = all_reduce_sum_with_gradient(local) / (count - 1)  # unbiased
    dim = z1.shape[1]
    variances = torch.diagonal(covariances, dim1=1, dim2=2)  # [2, D]
    std = torch.sqrt(variances + eps)
    variance = F.relu(variance_target - std).mean(dim=1).sum() / 2  # mean over D, half per view
    covariance = _off_diagonal(covariances).square().sum() / dim  # both views
    return VICRegTerms(invariance, variance, covariance)


def vicreg_loss(
    z1: torch.Tensor,
    z2: torch.Tensor,
    invariance_weight: float = 25.0,
    variance_weight: float = 25.0,
    covariance_weight: float = 1.0,
    variance_target: float = 1.0,
    eps: float = 1e-4,
) -> torch.Tensor:
    r"""VICReg: variance, invariance and covariance regularisation of two views' embeddings.

    Bardes, Ponce, LeCun, "VICReg: Variance-Invariance-Covariance Regularization for
    Self-Supervised Learning", ICLR 2022, eqs. (1)-(6). With :math:`Z, Z'` the ``[N, D]``
    embeddings of the two views, :math:`\mathrm{Var}` the unbiased variance over the batch,
    :math:`C(Z) = \frac{1}{N-1} \sum_b (z_b - \bar z)(z_b - \bar z)^\top` the covariance
    matrix and :math:`\gamma` = ``variance_target``, :math:`\epsilon` = ``eps``:

    .. math::

        s(Z, Z') = \frac{1}{N D} \sum_b \lVert z_b - z'_b \rVert_2^2, \quad
        v(Z) = \frac{1}{D} \sum_{j=1}^{D} \max\big(0, \gamma - \sqrt{\mathrm{Var}(z^j)
               + \epsilon}\big), \quad
        c(Z) = \frac{1}{D} \sum_{i \ne j} C(Z)_{ij}^2,

    .. math::

        \ell = \lambda\, s(Z, Z') + \mu\, \frac{v(Z) + v(Z')}{2} + \nu\, [c(Z) + c(Z')],

    :math:`\lambda, \mu, \nu` = ``invariance_weight``, ``variance_weight``,
    ``covariance_weight`` (the paper's 25, 25, 1; :math:`\gamma = 1`, :math:`\epsilon =
    10^{-4}`). The paper's eq. (6) writes :math:`\mu [v(Z) + v(Z')]`; the official code
    (whose runs the paper's weights come from) halves the variance term, as here.

    The invariance term is computed on each device's own images (as the official code
    does); variances and covariances over the global batch with exact gradients (the
    official code gathers the embeddings; here the sums are all-reduced, which gives the
    same values). The mean of the devices' losses is the loss of the global batch.

    Args:
        z1, z2: ``[n, D]`` embeddings (the expander's output) of the two views.

    Example::

        loss = vicreg_loss(expander(backbone(view1)), expander(backbone(view2)))
    """
    terms = vicreg_terms(z1, z2, variance_target, eps)
    return (invariance_weight * terms.invariance + variance_weight * terms.variance
            + covariance_weight * terms.covariance)
