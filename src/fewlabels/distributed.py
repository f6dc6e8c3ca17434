"""Collective helpers that work the same on one process and on many.

When ``torch.distributed`` is not initialised (one device), every helper is the identity, so
losses can call them unconditionally.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


class _GatherWithGradient(torch.autograd.Function):
    """All-gather whose backward sends every rank the gradient of its own slice.

    Forward: ``[b, ...]`` on each of W ranks -> ``[W*b, ...]`` on every rank.
    Backward: the gradient of the gathered tensor is summed over ranks (every rank's loss
    depends on every slice) and each rank keeps the part for its own input. With DDP averaging
    the parameter gradients over ranks, this gives the gradient of the mean of the ranks'
    losses, i.e. exactly the single-process gradient on the global batch.
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.batch = tensor.shape[0]
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = dist.get_rank() * ctx.batch
        return grad[start : start + ctx.batch]


def gather_with_gradient(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` from all ranks along dim 0 (rank order), keeping gradients."""
    if not is_distributed():
        return tensor
    return _GatherWithGradient.apply(tensor)


@torch.no_grad()
def gather_no_gradient(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` from all ranks along dim 0, without gradients (queues, k-means)."""
    if not is_distributed():
        return tensor.detach()
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


@torch.no_grad()
def all_reduce_sum_no_gradient(tensor: torch.Tensor) -> torch.Tensor:
    """Element-wise sum of ``tensor`` over ranks, as a new tensor without gradient.

    On one process: a detached copy. For statistics every rank must agree on (DINO's centre,
    a normaliser estimated from the first batch, monitors).
    """
    total = tensor.detach().clone()
    if is_distributed():
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total


@torch.no_grad()
def all_reduce_mean_no_gradient(tensor: torch.Tensor) -> torch.Tensor:
    """Element-wise mean of ``tensor`` over ranks, as a new tensor without gradient.

    The plain mean of the ranks' values: a mean over the global batch only when every rank
    holds the same number of images (otherwise all-reduce a sum and a count instead).
    """
    return all_reduce_sum_no_gradient(tensor).div_(world_size())


class _AllReduceSumWithGradient(torch.autograd.Function):
    """All-reduce (sum) whose backward all-reduces (sums) the gradient.

    Forward: ``S = sum_r x_r`` on every rank. Why the backward is exact: the objective that
    DDP optimises is the mean of the ranks' losses, ``L = (1/W) sum_r L_r``, and every
    ``L_r`` depends on every ``x_q`` through ``S`` with ``dS/dx_q = I``, so
    ``dL/dx_q = (1/W) sum_r dL_r/dS``. Rank r's autograd only knows ``dL_r/dS``; summing
    it over ranks gives ``sum_r dL_r/dS`` on every rank, and DDP's average of the parameter
    gradients supplies the 1/W. (An identity backward, or a non-autograd all_reduce, leaves
    only ``dL_q/dS`` on rank q: gradients W times too small when every rank computes the same
    loss from S, as in Barlow Twins' cross-correlation; lightly-ai/lightly#1977.)
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        total = tensor.clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


def all_reduce_sum_with_gradient(tensor: torch.Tensor) -> torch.Tensor:
    """Sum of ``tensor`` over ranks with exact gradients (see ``_AllReduceSumWithGradient``).

    For statistics of the global batch inside a loss, e.g. Barlow Twins' cross-correlation
    ``C = all_reduce_sum_with_gradient(z1.T @ z2) / global_batch``: with DDP averaging the
    parameter gradients, the gradients equal those of one process on the global batch.
    On one process it is the identity.
    """
    if not is_distributed():
        return tensor
    return _AllReduceSumWithGradient.apply(tensor)


@torch.no_grad()
def average_gradients(parameters: Iterable[torch.Tensor]) -> None:
    """Replace every parameter's gradient by its mean over ranks, as DDP's reducer does, for
    loops that do not wrap their model in DDP (episodic training, where MAML differentiates
    through inner steps DDP cannot see). One all-reduce of the flattened gradients; every
    rank must hold a gradient for the same parameters. Nothing on one process."""
    if not is_distributed():
        return
    grads = [parameter.grad for parameter in parameters if parameter.grad is not None]
    if not grads:
        return
    flat = torch.cat([grad.reshape(-1) for grad in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat.div_(dist.get_world_size())
    for grad, averaged in zip(grads, flat.split([grad.numel() for grad in grads]), strict=True):
        grad.copy_(averaged.view_as(grad))


@torch.no_grad()
def average_float_buffers(module: torch.nn.Module) -> None:
    """Average a module's floating-point buffers (batch-norm running statistics) over ranks,
    so that every rank holds the same network after a loop whose ranks updated them on their
    own episodes. Integer buffers (batch counts) are left alone. Nothing on one process."""
    if not is_distributed():
        return
    for buffer in module.buffers():
        if buffer.is_floating_point():
            dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
            buffer.div_(dist.get_world_size())
