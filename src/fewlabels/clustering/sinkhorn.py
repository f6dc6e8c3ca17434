"""Balanced soft assignments by Sinkhorn-Knopp: entropy-regularised optimal transport.

Given scores ``S [B, K]`` of B samples against K clusters (logits, prototype similarities),
:func:`sinkhorn_knopp` returns the transport plan

    Q = argmax_{Q in U(r, c)}  <Q, S> + eps * H(Q),    U(r, c) = {Q >= 0 : Q 1 = r, Q^T 1 = c},

whose solution has the form ``Q_ij = exp(S_ij / eps + a_i + b_j)`` (Cuturi, "Sinkhorn
Distances: Lightspeed Computation of Optimal Transport", NeurIPS 2013). The Sinkhorn-Knopp
iterations find the scalings ``a`` and ``b`` by matching the marginals in turn:

    b_j <- log c_j - logsumexp_i (S_ij / eps + a_i)      (every cluster gets its mass c_j)
    a_i <- log r_i - logsumexp_j (S_ij / eps + b_j)      (every sample gets its mass r_i)

By default ``r_i = 1`` and ``c_j = B / K``: the equipartition constraint that SeLa (Asano,
Rupprecht, Vedaldi, "Self-labelling via simultaneous clustering and representation
learning", ICLR 2020) imposes on the labels of a whole dataset and SwAV (Caron, Misra,
Mairal, Goyal, Bojanowski, Joulin, "Unsupervised Learning of Visual Features by Contrasting
Cluster Assignments", NeurIPS 2020) on the codes of a batch: every row of the result is a
sample's distribution over clusters, and every cluster receives B/K samples' worth of mass.
The iterations start from ``a = 0`` and end with the row step, so the rows are exact and the
columns approach their marginals as the iterations go on; in exact arithmetic this is SwAV's
``distributed_sinkhorn`` (3 iterations there, eps = 0.05).

Numerics: the iterations run in the log domain on the two scaling vectors (logsumexp
subtracts the maximum), in at least float32, so large scores or a small ``eps`` cannot
overflow or leave a row or column of zeros (which gives NaN in the plain multiplicative
form). Memory: a few ``[B, K]`` temporaries and no larger (about 70 MB each for SeLa's
60,000 images x 300 clusters in float32).

Across devices (``across_devices=True``, SwAV's codes): each rank holds its own rows, and the
column step combines the ranks' per-column logsumexps (one all-gather of ``[K]`` per
iteration), so the plan is balanced over the global batch and every rank gets its own rows of
the plan one process would compute on the concatenated batch.
"""

from __future__ import annotations

import math

import torch

from fewlabels.distributed import all_reduce_sum_no_gradient, gather_no_gradient
from fewlabels.errors import UserError

__all__ = ["sinkhorn_knopp"]


@torch.no_grad()
def sinkhorn_knopp(
    scores: torch.Tensor,
    epsilon: float = 0.05,
    iterations: int = 3,
    *,
    across_devices: bool = False,
    row_marginals: torch.Tensor | None = None,
    column_marginals: torch.Tensor | None = None,
    tolerance: float | None = None,
) -> torch.Tensor:
    """The entropy-regularised transport plan ``Q [B, K]`` of ``scores [B, K]`` (see the
    module docstring for the equations), without gradient, in float32 (or float64 if the
    scores are).

    - ``epsilon``: the entropy weight; smaller gives harder assignments (SwAV: 0.05).
    - ``iterations``: pairs of (column, row) steps at most (SwAV: 3; SeLa: until converged).
    - ``tolerance``: stop early once every column sum is within a factor ``exp(tolerance)``
      of its marginal (measured on the plan of the previous iteration, so it costs nothing).
    - ``across_devices``: the columns are balanced over the rows of all ranks (SwAV's
      all-reduced codes); each rank passes and gets back its own rows.
    - ``row_marginals [B]``: each sample's mass, default 1 (the rows of the result are then
      distributions over clusters); ``column_marginals [K]``: each cluster's mass, default
      the total row mass (over all ranks when ``across_devices``) divided by K. They must
      have the same total.
    """
    if scores.ndim != 2:
        raise UserError(f"sinkhorn_knopp takes scores [B, K], got shape {tuple(scores.shape)}")
    if epsilon <= 0:
        raise UserError(f"the Sinkhorn epsilon must be positive, got {epsilon}")
    if iterations < 1:
        raise UserError(f"Sinkhorn-Knopp needs at least 1 iteration, got {iterations}")
    dtype = torch.float64 if scores.dtype == torch.float64 else torch.float32
    logits = scores.detach().to(dtype) / epsilon  # [B, K]
    batch, clusters = logits.shape

    log_rows = _log_marginal(row_marginals, batch, logits, "row")  # [B]
    total = log_rows.exp().sum()
    if across_devices:
        total = all_reduce_sum_no_gradient(total)
    if column_marginals is None:
        log_columns = torch.full((clusters,), float(torch.log(total / clusters)),
                                 dtype=dtype, device=logits.device)
    else:
        log_columns = _log_marginal(column_marginals, clusters, logits, "column")
        if not math.isclose(float(log_columns.exp().sum()), float(total), rel_tol=1e-4):
            raise UserError("the row and column marginals of sinkhorn_knopp must have the same "
                            f"total, got {float(total):.6g} and "
                            f"{float(log_columns.exp().sum()):.6g}")

    row_scaling = torch.zeros(batch, dtype=dtype, device=logits.device)  # a
    column_scaling = torch.zeros(clusters, dtype=dtype, device=logits.device)  # b
    for iteration in range(iterations):
        if iteration:
            row_scaling = log_rows - torch.logsumexp(logits + column_scaling, dim=1)  # [B]
        column_lse = torch.logsumexp(logits + row_scaling[:, None], dim=0)  # [K]
        if across_devices:
            column_lse = torch.logsumexp(gather_no_gradient(column_lse[None]), dim=0)
        updated = log_columns - column_lse
        # How far the previous plan's column sums were from their marginals (in log): the
        # same on every rank, so all ranks stop together.
        change = (updated - column_scaling).abs().max()
        column_scaling = updated
        if tolerance is not None and iteration and float(change) < tolerance:
            break
    # The last row step, written as a softmax so that every row sums to its marginal to
    # rounding even when the scores are large (exp(logits + a + b) would carry their error).
    return torch.softmax(logits + column_scaling, dim=1).mul_(log_rows.exp()[:, None])


def _log_marginal(marginal: torch.Tensor | None, size: int, like: torch.Tensor,
                  which: str) -> torch.Tensor:
    if marginal is None:
        return torch.zeros(size, dtype=like.dtype, device=like.device)
    marginal = marginal.detach().to(device=like.device, dtype=like.dtype)
    if marginal.shape != (size,):
        raise UserError(f"the {which} marginals of sinkhorn_knopp must have shape ({size},), "
                        f"got {tuple(marginal.shape)}")
    if not bool((marginal > 0).all()):
        raise UserError(f"the {which} marginals of sinkhorn_knopp must be positive")
    return marginal.log()
