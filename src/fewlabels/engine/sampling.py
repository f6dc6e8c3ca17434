"""Stateless batch sampling: the indices of step ``s`` depend only on (seed, stream, s).

Every epoch of a stream is a fresh permutation drawn from a generator seeded with
(seed, stream, epoch); a global batch is a contiguous slice of it, and each device takes its
own part of the global batch. Nothing needs saving to resume exactly, and one device or many
see the same global batches.
"""

from __future__ import annotations

import torch

from fewlabels.errors import UserError


class StreamSampler:
    """Global batches of ``global_batch_size`` indices into ``num_items``, dropping the last
    partial batch of every epoch."""

    def __init__(self, num_items: int, global_batch_size: int, seed: int, stream: int = 0) -> None:
        if global_batch_size > num_items:
            raise UserError(
                f"batch size {global_batch_size} is larger than the {num_items} training "
                "images; pass a smaller --batch-size"
            )
        self.num_items = num_items
        self.global_batch_size = global_batch_size
        self.seed = seed
        self.stream = stream
        self.steps_per_epoch = num_items // global_batch_size
        self._cached_epoch = -1
        self._permutation = torch.empty(0, dtype=torch.long)

    def permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._cached_epoch:
            generator = torch.Generator().manual_seed(
                (self.seed * 1_000_003 + self.stream * 7919 + epoch) % (2**63)
            )
            self._permutation = torch.randperm(self.num_items, generator=generator)
            self._cached_epoch = epoch
        return self._permutation

    def indices(self, step: int, rank: int = 0, world_size: int = 1) -> torch.Tensor:
        """This device's indices for global step ``step``."""
        epoch, within = divmod(step, self.steps_per_epoch)
        start = within * self.global_batch_size
        per_device = self.global_batch_size // world_size
        start += rank * per_device
        return self.permutation(epoch)[start : start + per_device]


def step_seed(seed: int, step: int, rank: int) -> int:
    """The seed of the augmentation generator for one step on one device."""
    return (seed * 1_000_003 + step * 8191 + rank * 131) % (2**63)


class CyclingSampler:
    """Global batches of ``global_batch_size`` indices into ``num_items`` from an endless
    chain of seeded permutations: position ``p`` of the chain is item
    ``permutation(p // num_items)[p % num_items]``, and step ``s`` takes positions
    ``[s·B, (s+1)·B)``. Every item appears once per cycle, nothing is dropped, and a batch may
    be larger than the set (40 labeled images, batches of 64: FixMatch's labeled stream)."""

    def __init__(self, num_items: int, global_batch_size: int, seed: int, stream: int = 1) -> None:
        if num_items < 1:
            raise UserError("the labeled stream is empty; give at least one labeled image")
        if global_batch_size < 1:
            raise UserError(f"batch size must be at least 1, got {global_batch_size}")
        self.num_items = num_items
        self.global_batch_size = global_batch_size
        self.permutations = StreamSampler(num_items, num_items, seed, stream)

    def indices(self, step: int, rank: int = 0, world_size: int = 1) -> torch.Tensor:
        """This device's indices for global step ``step``."""
        per_device = self.global_batch_size // world_size
        start = step * self.global_batch_size + rank * per_device
        positions = torch.arange(start, start + per_device)
        cycles, offsets = positions // self.num_items, positions % self.num_items
        chosen = torch.empty(per_device, dtype=torch.long)
        for cycle in cycles.unique().tolist():  # at most a few cycles per batch
            where = cycles == cycle
            chosen[where] = self.permutations.permutation(cycle)[offsets[where]]
        return chosen
