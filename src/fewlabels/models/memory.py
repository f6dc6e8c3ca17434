"""Feature memories as module buffers: MoCo's queue of keys and NPID's memory bank.

Both hold unit rows in registered buffers, so ``state_dict`` (checkpoints) carries them and a
resumed run continues with the same negatives. Both are updated in place, without gradient,
from the features of the GLOBAL batch (gathered across devices), identically on every
device, so the copies on the devices never drift apart. Call the update AFTER the loss
that reads the memory: the losses copy what they read, so updating before ``backward()``
is safe, but updating before the loss would make this step's keys their own negatives.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fewlabels.distributed import gather_no_gradient
from fewlabels.errors import UserError


def _random_unit_rows(count: int, dim: int, generator: torch.Generator | None) -> torch.Tensor:
    source = generator.device if generator is not None else "cpu"
    rows = torch.randn(count, dim, generator=generator, device=source).cpu()
    return F.normalize(rows, dim=1)  # [count, dim]


def _check_sizes(size: int, dim: int, what: str) -> None:
    if size < 1 or dim < 1:
        raise UserError(f"the {what} needs a positive size and dimension, got {size} x {dim}")


class FeatureQueue(nn.Module):
    """MoCo's dictionary of keys: a first-in, first-out queue of ``size`` unit rows.

    He et al., "Momentum Contrast for Unsupervised Visual Representation Learning",
    CVPR 2020, Section 3.2. Buffers: ``queue`` ``[size, dim]`` (random unit rows at
    construction, from ``generator`` or torch's global generator) and ``pointer`` (0-dim
    long), the row the next key goes to. The rows from ``pointer`` round to ``pointer - 1``
    are the keys from oldest to newest (:meth:`ordered`).

    Example::

        loss = moco_queue_loss(query, key, self.queue.queue, temperature=0.2)
        self.queue.enqueue_(key)  # after the loss
    """

    queue: torch.Tensor
    pointer: torch.Tensor

    def __init__(self, size: int, dim: int, generator: torch.Generator | None = None) -> None:
        super().__init__()
        _check_sizes(size, dim, "queue")
        self.register_buffer("queue", _random_unit_rows(size, dim, generator))
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))

    @property
    def size(self) -> int:
        return self.queue.shape[0]

    @torch.no_grad()
    def enqueue_(self, keys: torch.Tensor) -> None:
        """Append the keys of the global batch, overwriting the oldest rows.

        ``keys`` ``[n, dim]`` are this device's keys: they are gathered from every device
        (rank order, no gradient), normalised, and written at ``pointer, pointer + 1, ...``
        modulo ``size``, so a batch may wrap around the end and ``size`` need not be a
        multiple of the batch. A global batch larger than the queue keeps its last ``size``
        keys. No host synchronisation: the pointer stays a tensor.
        """
        if keys.dim() != 2 or keys.shape[1] != self.queue.shape[1]:
            raise ValueError(f"expected keys [n, {self.queue.shape[1]}], got {tuple(keys.shape)}")
        keys = gather_no_gradient(keys.detach())  # [B, dim], global batch in rank order
        keys = F.normalize(keys.float(), dim=1).to(self.queue.dtype)
        count = keys.shape[0]
        kept = min(count, self.size)
        offsets = torch.arange(count - kept, count, device=self.queue.device)  # [kept]
        positions = (self.pointer + offsets) % self.size
        self.queue.index_copy_(0, positions, keys[count - kept:].to(self.queue.device))
        self.pointer.copy_((self.pointer + count) % self.size)

    @torch.no_grad()
    def ordered(self) -> torch.Tensor:
        """A copy of the queue from the oldest row to the newest: ``[size, dim]``."""
        order = (self.pointer + torch.arange(self.size, device=self.queue.device)) % self.size
        return self.queue.index_select(0, order)

    def extra_repr(self) -> str:
        return f"size={self.queue.shape[0]}, dim={self.queue.shape[1]}"


class MemoryBank(nn.Module):
    """NPID's memory bank: one unit row per training image, ``bank`` ``[size, dim]``.

    Wu et al., "Unsupervised Feature Learning via Non-Parametric Instance Discrimination",
    CVPR 2018, Section 3.2: rows start as random unit vectors (from ``generator`` or torch's
    global generator) and follow the features with momentum (:meth:`update_`, the paper's
    0.5). Row ``i`` belongs to the image with dataset index ``i`` (the batch's indices).

    Example::

        loss = npid_nce_loss(features, indices, self.memory.bank, normalizer=self.normalizer)
        self.memory.update_(indices, features, momentum=0.5)  # after the loss
    """

    bank: torch.Tensor

    def __init__(self, size: int, dim: int, generator: torch.Generator | None = None) -> None:
        super().__init__()
        _check_sizes(size, dim, "memory bank")
        self.register_buffer("bank", _random_unit_rows(size, dim, generator))

    @property
    def size(self) -> int:
        return self.bank.shape[0]

    @torch.no_grad()
    def update_(self, indices: torch.Tensor, features: torch.Tensor, momentum: float = 0.5) -> None:
        """``v_i <- normalise(m v_i + (1 - m) f_i)`` for the images of the global batch.

        ``indices`` ``[n]`` and ``features`` ``[n, dim]`` (normalised here) are this
        device's; both are gathered from every device (no gradient), so every device applies
        the same update. If an index occurs more than once in the global batch (two views
        of one image), its last occurrence in rank order is used, deterministically.
        """
        if not 0.0 <= momentum <= 1.0:
            raise UserError(f"the memory bank momentum must be in [0, 1], got {momentum}")
        if features.dim() != 2 or features.shape[1] != self.bank.shape[1]:
            raise ValueError(f"expected features [n, {self.bank.shape[1]}], got "
                             f"{tuple(features.shape)}")
        if indices.shape != (features.shape[0],) or indices.is_floating_point():
            raise ValueError(f"expected integer indices [{features.shape[0]}], got "
                             f"{indices.dtype} {tuple(indices.shape)}")
        device = self.bank.device
        indices = gather_no_gradient(indices.to(device=features.device, dtype=torch.long))
        features = gather_no_gradient(features.detach())  # [B, dim]
        indices, features = indices.to(device), features.to(device)
        features = F.normalize(features.float(), dim=1)
        # The last occurrence of each index: a scatter of positions with "amax" (exact).
        unique, inverse = torch.unique(indices, return_inverse=True)
        positions = torch.arange(indices.shape[0], device=device)
        last = torch.full_like(unique, -1).scatter_reduce_(0, inverse, positions, "amax")
        rows = indices[last]  # [u]
        mixed = self.bank[rows].float().mul_(momentum).add_(features[last], alpha=1 - momentum)
        self.bank.index_copy_(0, rows, F.normalize(mixed, dim=1).to(self.bank.dtype))

    def extra_repr(self) -> str:
        return f"size={self.bank.shape[0]}, dim={self.bank.shape[1]}"
