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

Numerics, two exact paths chosen by the range of ``S / eps`` (the same on every rank):

- range up to 300 (SwAV: cosines / 0.05 span at most 40): the scalings ``u = exp(a)``,
  ``v = exp(b)`` are iterated on the kernel ``exp(S / eps - max)`` in float64, two
  matrix-vector products per iteration (SeLa's fast form), which cannot underflow to a zero
  row or column at that range;
- larger ranges (large logits, tiny ``eps``): the log-domain iteration above, where logsumexp
  subtracts the maximum, so nothing overflows and no row or column becomes all zeros (the
  plain multiplicative form then gives NaN). About ten times slower.

Either way the last step normalises the rows, so they sum to their marginals to rounding.
Memory: a few ``[B, K]`` arrays and nothing larger (about 150 MB for the float64 kernel of
SeLa's 60,000 images x 300 clusters).

Across devices (``across_devices=True``, SwAV's codes): each rank holds its own rows, and the
column sums are combined over ranks at every iteration (an all-reduce of ``[K]``, or an
all-gather of the per-column logsumexps), so the plan is balanced over the global batch and
every rank gets its own rows of the plan one process would compute on the concatenated batch.
"""

from __future__ import annotations

import math

import torch

from fewlabels.distributed import all_reduce_sum_no_gradient, gather_no_gradient
from fewlabels.errors import UserError

__all__ = ["sinkhorn_knopp"]

# Largest range of scores / eps for the float64 scaling form: exp(-300) ~ 5e-131 leaves the
# scalings (up to about B / exp(-300)) far from float64's limits.
SCALING_FORM_MAX_RANGE = 300.0


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
    module docstring for the equations), without gradient, in float32 (float64 if the scores
    are).

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
    if scores.numel() == 0:
        raise UserError(f"sinkhorn_knopp needs at least one sample and one cluster, got "
                        f"scores of shape {tuple(scores.shape)}")
    out_dtype = torch.float64 if scores.dtype == torch.float64 else torch.float32
    logits = scores.detach().to(out_dtype) / epsilon  # [B, K]
    rows, columns = _marginals(logits, row_marginals, column_marginals, across_devices)

    # The highest and lowest logit over all ranks, so every rank takes the same path.
    extremes = torch.stack([logits.max(), -logits.min()])
    if across_devices:
        extremes = gather_no_gradient(extremes[None]).amax(dim=0)
    if float(extremes.sum()) <= SCALING_FORM_MAX_RANGE:
        plan = _plan_by_products(logits, float(extremes[0]), rows, columns, iterations,
                                 tolerance, across_devices)
    else:
        plan = _plan_in_log_domain(logits, rows.log(), columns.log(), iterations, tolerance,
                                   across_devices)
    return plan.mul_(rows.to(plan.dtype)[:, None]).to(out_dtype)


def _plan_by_products(logits: torch.Tensor, highest: float, rows: torch.Tensor,
                      columns: torch.Tensor, iterations: int, tolerance: float | None,
                      across_devices: bool) -> torch.Tensor:
    """Scalings u, v on the float64 kernel P = exp(logits - highest), in (exp(-300), 1]:
    ``v <- c / (P^T u)``, ``u <- r / (P v)``; returns the plan with rows normalised to 1
    (the last row step), float64."""
    kernel = (logits.double() - highest).exp_()  # [B, K]
    rows, columns = rows.double(), columns.double()
    row_scaling = torch.ones_like(rows)  # u = exp(a), a = 0 at the start
    column_scaling = torch.ones_like(columns)
    for iteration in range(iterations):
        if iteration:
            row_scaling = rows / (kernel @ column_scaling)  # [B]
        column_sums = kernel.T @ row_scaling  # [K]
        if across_devices:
            column_sums = all_reduce_sum_no_gradient(column_sums)
        updated = columns / column_sums
        # How far the previous plan's column sums were from their marginals (log ratio):
        # the same on every rank, so all ranks stop together.
        change = (updated / column_scaling).log_().abs_().max()
        column_scaling = updated
        if tolerance is not None and iteration and float(change) < tolerance:
            break
    plan = kernel.mul_(column_scaling)  # in place: the kernel is not needed any more
    return plan.div_(plan.sum(dim=1, keepdim=True))


def _plan_in_log_domain(logits: torch.Tensor, log_rows: torch.Tensor,
                        log_columns: torch.Tensor, iterations: int, tolerance: float | None,
                        across_devices: bool) -> torch.Tensor:
    """The log-domain iteration of the module docstring; returns the plan with rows
    normalised to 1 (the last row step, as a softmax, so that large logits cannot carry
    their rounding error into the row sums)."""
    row_scaling = torch.zeros_like(log_rows)  # a
    column_scaling = torch.zeros_like(log_columns)  # b
    for iteration in range(iterations):
        if iteration:
            row_scaling = log_rows - torch.logsumexp(logits + column_scaling, dim=1)  # [B]
        column_lse = torch.logsumexp(logits + row_scaling[:, None], dim=0)  # [K]
        if across_devices:  # combine the ranks' logsumexps: one all-gather of [W, K]
            column_lse = torch.logsumexp(gather_no_gradient(column_lse[None]), dim=0)
        updated = log_columns - column_lse
        change = (updated - column_scaling).abs().max()
        column_scaling = updated
        if tolerance is not None and iteration and float(change) < tolerance:
            break
    return torch.softmax(logits + column_scaling, dim=1)


def _marginals(logits: torch.Tensor, row_marginals: torch.Tensor | None,
               column_marginals: torch.Tensor | None,
               across_devices: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The row masses ``[B]`` (default 1) and column masses ``[K]`` (default the total row
    mass over all ranks divided by K), checked."""
    batch, clusters = logits.shape
    rows = _checked(row_marginals, batch, logits, "row")
    total = rows.sum()
    if across_devices:
        total = all_reduce_sum_no_gradient(total)
    if column_marginals is None:
        return rows, (total / clusters).expand(clusters).clone()
    columns = _checked(column_marginals, clusters, logits, "column")
    if not math.isclose(float(columns.sum()), float(total), rel_tol=1e-4):
        raise UserError("the row and column marginals of sinkhorn_knopp must have the same "
                        f"total, got {float(total):.6g} and {float(columns.sum()):.6g}")
    return rows, columns


def _checked(marginal: torch.Tensor | None, size: int, like: torch.Tensor,
             which: str) -> torch.Tensor:
    if marginal is None:
        return torch.ones(size, dtype=like.dtype, device=like.device)
    marginal = marginal.detach().to(device=like.device, dtype=like.dtype)
    if marginal.shape != (size,):
        raise UserError(f"the {which} marginals of sinkhorn_knopp must have shape ({size},), "
                        f"got {tuple(marginal.shape)}")
    if not bool((marginal > 0).all()):
        raise UserError(f"the {which} marginals of sinkhorn_knopp must be positive")
    return marginal
