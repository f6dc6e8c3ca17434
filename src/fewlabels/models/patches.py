"""Patches and masks for masked image modelling (MAE, SimMIM, BEiT).

Patches are taken row-major over the grid, and inside a patch the pixels are ordered
``(row, column, channel)``, as MAE's code does: patch ``l = i * w + j`` of an image of
``h x w`` patches holds ``x[:, i*p:(i+1)*p, j*p:(j+1)*p]``. :func:`patchify` and
:func:`unpatchify` are exact inverses (a reshape and a permute, no arithmetic).

Masks are drawn without Python loops over images:

- :func:`random_masking` (MAE, He et al., CVPR 2022): per-image uniform noise is sorted;
  the patches of the ``L_keep`` smallest noise values are kept. ``restore_indices`` is the
  inverse permutation (the argsort of the sort), which puts decoder tokens back in grid order
  by a gather ("unshuffle").
- :func:`block_random_mask` (SimMIM, Xie et al., CVPR 2022): the grid is covered by square
  blocks of ``block`` x ``block`` patches and a random set of blocks is masked, again by
  sorting noise; blocks larger than one patch are placed with a random offset per image so
  block edges are not always at the same pixels.
- :func:`blockwise_mask` (BEiT, Bao et al., ICLR 2022, Algorithm 1): rectangles of random
  area and aspect ratio are added until about ``num_masked`` patches are masked; vectorised
  over images, with a fixed number of rounds instead of BEiT's per-image while-loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Images ``[N, C, H, W]`` -> patches ``[N, L, p*p*C]`` (row-major grid, pixels
    ``(row, column, channel)`` inside a patch). ``patch_size`` must divide H and W."""
    n, c, height, width = images.shape
    p = patch_size
    if height % p or width % p:
        raise ValueError(f"patch size {p} must divide the image side, got {height}x{width}")
    h, w = height // p, width // p
    x = images.reshape(n, c, h, p, w, p)  # [N, C, h, p, w, p]
    x = x.permute(0, 2, 4, 3, 5, 1)  # [N, h, w, p, p, C]
    return x.reshape(n, h * w, p * p * c)  # [N, L, p*p*C]


def unpatchify(patches: torch.Tensor, patch_size: int, channels: int,
               grid: tuple[int, int] | None = None) -> torch.Tensor:
    """Patches ``[N, L, p*p*C]`` -> images ``[N, C, h*p, w*p]``; ``grid`` is ``(h, w)``,
    a square grid when not given."""
    n, length, size = patches.shape
    p = patch_size
    if size != p * p * channels:
        raise ValueError(f"patches of {size} values are not {p}x{p}x{channels}")
    if grid is None:
        side = math.isqrt(length)
        if side * side != length:
            raise ValueError(f"{length} patches do not make a square grid; give grid=(h, w)")
        grid = (side, side)
    h, w = grid
    x = patches.reshape(n, h, w, p, p, channels)  # [N, h, w, p, p, C]
    x = x.permute(0, 5, 1, 3, 2, 4)  # [N, C, h, p, w, p]
    return x.reshape(n, channels, h * p, w * p)


def patch_mask_to_pixels(mask: torch.Tensor, patch_size: int,
                         grid: tuple[int, int] | None = None) -> torch.Tensor:
    """A patch mask ``[N, L]`` -> a pixel mask ``[N, 1, h*p, w*p]`` of the same dtype."""
    n, length = mask.shape
    if grid is None:
        side = math.isqrt(length)
        grid = (side, side)
    pixels = mask.reshape(n, 1, *grid)
    return pixels.repeat_interleave(patch_size, 2).repeat_interleave(patch_size, 3)


def num_kept(num_patches: int, mask_ratio: float) -> int:
    """Patches MAE keeps: ``int(L * (1 - mask_ratio))`` as in its code, at least 1 and at
    most ``L - 1`` (so there is always something to predict and something to see)."""
    return min(num_patches - 1, max(1, int(num_patches * (1 - mask_ratio))))


@dataclass
class RandomMasking:
    """MAE's mask of one batch: ``keep_indices [N, L_keep]`` (the kept patches, in the
    order of their noise), ``restore_indices [N, L]`` (the inverse permutation: position
    ``l`` of the grid is at ``restore_indices[:, l]`` in the shuffled order) and ``mask
    [N, L]`` bool, True where a patch is masked (removed)."""

    keep_indices: torch.Tensor
    restore_indices: torch.Tensor
    mask: torch.Tensor

    def as_tuple(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.keep_indices, self.restore_indices, self.mask


def random_masking(batch: int, num_patches: int, mask_ratio: float,
                   generator: torch.Generator | None = None,
                   device: torch.device | str | None = None) -> RandomMasking:
    """MAE's per-image random masking by sorting noise: exactly :func:`num_kept` patches
    kept in every image, each subset equally likely."""
    if device is None:
        device = generator.device if generator is not None else "cpu"
    keep = num_kept(num_patches, mask_ratio)
    noise = torch.rand(batch, num_patches, generator=generator, device=device)  # [N, L]
    shuffle = noise.argsort(dim=1)  # [N, L]: ascending noise, the first `keep` are kept
    restore = shuffle.argsort(dim=1)  # [N, L]: the inverse permutation
    mask = torch.ones(batch, num_patches, dtype=torch.bool, device=device)
    mask[:, :keep] = False  # in shuffled order
    mask = torch.gather(mask, 1, restore)  # [N, L] in grid order
    return RandomMasking(shuffle[:, :keep], restore, mask)


def block_random_mask(batch: int, grid: int, mask_ratio: float, block: int = 1,
                      generator: torch.Generator | None = None,
                      device: torch.device | str | None = None) -> torch.Tensor:
    """SimMIM's random masking of square blocks of ``block`` x ``block`` patches on a
    ``grid`` x ``grid`` patch grid: ``[N, grid*grid]`` bool, True where masked.

    With ``block == 1`` exactly ``round(ratio * L)`` patches are masked in every image. With
    larger blocks the blocks tile a grid of ``ceil(grid / block) + 1`` blocks a side, shifted
    by a random offset in ``[0, block)`` per image and cropped to the patch grid;
    ``round(ratio * B)`` of its ``B`` blocks are masked, so the masked fraction of patches is
    ``ratio`` on average, not exactly.
    """
    if device is None:
        device = generator.device if generator is not None else "cpu"
    blocks = grid if block == 1 else -(-grid // block) + 1  # blocks a side
    count = blocks * blocks
    masked = min(count, max(1, round(mask_ratio * count)))
    noise = torch.rand(batch, count, generator=generator, device=device)  # [N, B]
    rank = noise.argsort(dim=1).argsort(dim=1)  # [N, B]: each block's place in the order
    block_mask = rank < masked  # [N, B]
    if block == 1:
        return block_mask
    offsets = torch.randint(0, block, (batch, 2), generator=generator, device=device)  # [N, 2]
    positions = torch.arange(grid, device=device)
    rows = (positions[None] + offsets[:, :1]) // block  # [N, grid]: block row of patch row
    cols = (positions[None] + offsets[:, 1:]) // block  # [N, grid]
    index = rows[:, :, None] * blocks + cols[:, None, :]  # [N, grid, grid]
    return torch.gather(block_mask, 1, index.flatten(1))  # [N, grid*grid]


def blockwise_mask(batch: int, grid: int, num_masked: int, min_block: int = 4,
                   aspect: tuple[float, float] = (0.3, 1 / 0.3), rounds: int = 30,
                   generator: torch.Generator | None = None,
                   device: torch.device | str | None = None) -> torch.Tensor:
    """BEiT's block-wise masking on a ``grid`` x ``grid`` patch grid: ``[N, grid*grid]``
    bool, True where masked, with at most ``num_masked`` masked patches per image.

    Each round, every image draws a rectangle of area ``s ~ U[min_block, remaining]`` and
    aspect ratio ``r`` log-uniform in ``aspect``, of side ``round(sqrt(s r))`` by
    ``round(sqrt(s / r))`` at a uniform position, and adds it when it masks at least one new
    patch and no more than the patches still to mask (BEiT's acceptance rule). BEiT repeats
    per image until the count is reached or ten draws in a row fail; here every image takes
    ``rounds`` draws at once, which reaches the target (within a few patches) for BEiT's
    40 % on grids of 7 x 7 to 14 x 14.
    """
    if device is None:
        device = generator.device if generator is not None else "cpu"
    mask = torch.zeros(batch, grid, grid, dtype=torch.bool, device=device)
    positions = torch.arange(grid, device=device)
    log_low, log_high = math.log(aspect[0]), math.log(aspect[1])
    for _ in range(rounds):  # a fixed number of rounds, each over the whole batch
        done = mask.flatten(1).sum(1)  # [N]
        remaining = (num_masked - done).clamp_min(0).float()  # [N]
        draws = torch.rand(batch, 4, generator=generator, device=device)  # [N, 4]
        low = torch.minimum(torch.full_like(remaining, float(min_block)), remaining)
        area = low + draws[:, 0] * (remaining - low)  # [N]
        ratio = torch.exp(log_low + draws[:, 1] * (log_high - log_low))
        height = (area * ratio).sqrt().round().clamp(1, grid).long()  # [N]
        width = (area / ratio).sqrt().round().clamp(1, grid).long()
        top = (draws[:, 2] * (grid - height + 1)).floor().long()  # [N] in [0, grid - h]
        left = (draws[:, 3] * (grid - width + 1)).floor().long()
        in_rows = (positions[None] >= top[:, None]) & (positions[None] < (top + height)[:, None])
        in_cols = (positions[None] >= left[:, None]) & (positions[None] < (left + width)[:, None])
        rectangle = in_rows[:, :, None] & in_cols[:, None, :]  # [N, grid, grid]
        new = (rectangle & ~mask).flatten(1).sum(1)  # [N]
        accept = (new > 0) & (new <= remaining)  # [N]
        mask |= rectangle & accept[:, None, None]
    return mask.flatten(1)
