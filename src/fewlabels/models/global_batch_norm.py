"""Batch norm with statistics over the global batch, on any device.

SimCLR, BYOL, SimSiam and MoCo v3 normalise with the statistics of the whole batch over all
devices ("global BN", SimCLR §B.6). torch's ``SyncBatchNorm`` does this on GPUs only; this
module does it anywhere ``torch.distributed`` runs (gloo on CPUs included), so a multi-process
CPU run computes what one process computes on the global batch, and tests can prove it.

Per channel, each device sums its inputs and their squares and counts them; one all-reduce
gives the global sums, from which mean and biased variance normalise the batch (the running
variance gets the unbiased one, as ``nn.BatchNorm`` does). The all-reduce is differentiable:
every device's output depends on every device's input, so the backward pass sums the
gradients of the global sums over devices (``distributed.all_reduce_sum_with_gradient``) and
the gradients are exactly those of one process. On one process it is a plain batch norm. Its
state dict is that of ``nn.BatchNorm2d``, so weights load into either.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from fewlabels.distributed import all_reduce_sum_with_gradient, is_distributed
from fewlabels.models.batch_norm_swap import replace_batch_norms


class GlobalBatchNorm(_BatchNorm):
    """``nn.BatchNorm1d``/``2d`` whose training statistics span every device's batch."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-D input, got {x.dim()}-D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and is_distributed()):
            return super().forward(x)
        dims = [0] + list(range(2, x.dim()))
        count = torch.tensor([x.numel() / x.shape[1]], device=x.device, dtype=torch.float32)
        moments = torch.cat([x.float().sum(dims), x.float().square().sum(dims), count])
        moments = all_reduce_sum_with_gradient(moments)
        channels = x.shape[1]
        total = moments[-1]
        mean = moments[:channels] / total
        variance = (moments[channels:2 * channels] / total - mean.square()).clamp_min(0)
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = (1.0 / float(self.num_batches_tracked) if self.momentum is None
                            else self.momentum)
                unbiased = variance * total / (total - 1).clamp_min(1)
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), momentum)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)
        shape = [1, channels] + [1] * (x.dim() - 2)
        normalised = (x - mean.view(shape).to(x.dtype)) * torch.rsqrt(
            variance.view(shape) + self.eps).to(x.dtype)
        if self.affine:
            normalised = normalised * self.weight.view(shape) + self.bias.view(shape)
        return normalised


def convert_to_global_batch_norm(module: nn.Module) -> nn.Module:
    """``module`` with every batch norm replaced by a :class:`GlobalBatchNorm` holding the same
    parameters and statistics (the conversion ``nn.SyncBatchNorm.convert_sync_batchnorm``
    makes for GPUs)."""
    return replace_batch_norms(
        module, lambda m: isinstance(m, _BatchNorm) and not isinstance(m, GlobalBatchNorm),
        lambda m: GlobalBatchNorm(m.num_features, m.eps, m.momentum, m.affine,
                                  m.track_running_stats))


__all__ = ["GlobalBatchNorm", "convert_to_global_batch_norm"]
