"""Batch norm over fixed groups of a batch: MoCo's shuffled BN on one device or many.

MoCo (He et al., CVPR 2020, Section 3.3) found that a query and its positive key normalised
with the statistics of the same images let the encoder "cheat" the pretext task: the batch
statistics leak which key in the dictionary belongs to the query. Its remedy, shuffling BN,
computes the keys on GPUs that hold a random permutation of the batch, so each device's
statistics cover other images for the keys than for the queries. That needs several GPUs
(facebookresearch/moco#47). The authors' CIFAR-10 demo simulates it on one GPU by splitting
the batch into groups that are normalised separately, as if each group were a device;
:class:`SplitBatchNorm` does the same here: in train mode, a batch of ``B`` images is cut
into ``num_splits`` consecutive groups of ``B / num_splits``, each normalised by its own mean
and (biased) variance. The method permutes the key encoder's input before it and restores the
order after (the "shuffle"), so a key's group differs from its query's.

The running statistics follow the average over groups of what ``nn.BatchNorm2d`` would record
for each group (the mean of the group means and of the unbiased group variances), so the
module's state dict is exactly ``nn.BatchNorm2d``'s and in eval mode it *is* a plain batch
norm: an exported backbone builds and evaluates with ``nn.BatchNorm2d``. With one split, it
is a plain batch norm in train mode as well.
"""

from __future__ import annotations

import torch
from torch import nn

from fewlabels.models.batch_norm_swap import replace_batch_norms


class SplitBatchNorm(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` that, in train mode, normalises ``num_splits`` consecutive groups of
    the batch with their own statistics. Input ``[B, C, H, W]`` with ``B`` a multiple of
    ``num_splits``; output of the same shape (and memory format)."""

    def __init__(self, num_features: int, num_splits: int = 1, eps: float = 1e-5,
                 momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats)
        if num_splits < 1:
            raise ValueError(f"num_splits must be at least 1, got {num_splits}")
        self.num_splits = num_splits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.num_splits == 1:
            return super().forward(x)
        self._check_input_dim(x)
        batch, channels, height, width = x.shape
        splits = self.num_splits
        if batch % splits:
            raise ValueError(f"a batch of {batch} cannot be split into {splits} equal groups "
                             "for batch norm")
        groups = x.view(splits, batch // splits, channels, height, width)  # [S, B/S, C, H, W]
        variance, mean = torch.var_mean(groups.float(), dim=(1, 3, 4), correction=0)  # [S, C]
        if self.track_running_stats and self.running_mean is not None:
            self._update_running_statistics(mean, variance, (batch // splits) * height * width)
        scale = torch.rsqrt(variance + self.eps)  # [S, C]
        if self.affine:
            scale = scale * self.weight
        shift = -mean * scale
        if self.affine:
            shift = shift + self.bias
        shape = (splits, 1, channels, 1, 1)
        out = torch.addcmul(shift.view(shape).to(x.dtype), groups, scale.view(shape).to(x.dtype))
        return out.reshape(batch, channels, height, width)

    @torch.no_grad()
    def _update_running_statistics(self, mean: torch.Tensor, variance: torch.Tensor,
                                   count: int) -> None:
        """Each group's update of ``nn.BatchNorm2d`` (unbiased variance), averaged."""
        self.num_batches_tracked.add_(1)
        momentum = (1.0 / float(self.num_batches_tracked) if self.momentum is None
                    else self.momentum)
        unbiased = variance * (count / max(count - 1, 1))
        self.running_mean.lerp_(mean.mean(0).to(self.running_mean.dtype), momentum)
        self.running_var.lerp_(unbiased.mean(0).to(self.running_var.dtype), momentum)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, num_splits={self.num_splits}"


def convert_to_split_batch_norm(module: nn.Module, num_splits: int) -> nn.Module:
    """``module`` with every ``nn.BatchNorm2d`` replaced by a :class:`SplitBatchNorm` of
    ``num_splits`` groups holding the same parameters and statistics (in place for children;
    returns the module, or its replacement when ``module`` itself is a batch norm)."""
    return replace_batch_norms(
        module, lambda m: isinstance(m, nn.BatchNorm2d) and not isinstance(m, SplitBatchNorm),
        lambda m: SplitBatchNorm(m.num_features, num_splits, m.eps, m.momentum, m.affine,
                                 m.track_running_stats))


__all__ = ["SplitBatchNorm", "convert_to_split_batch_norm"]
