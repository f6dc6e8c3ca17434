"""Tiles on a grid, with gaps and jitter, cut from a whole batch at once (jigsaw puzzles,
relative patch location).

The geometry, per image: a square region of ``grid * cell_size`` pixels, placed at a random
integer offset inside the image, is divided into ``grid x grid`` cells of ``cell_size``
pixels, numbered row by row (cell ``r * grid + c``). In each cell a tile of ``tile_size``
pixels sits at the cell's centre (rounded towards the top left) moved by a random integer
offset of at most ``jitter`` pixels in each direction, drawn per image and per tile. A tile
therefore always lies inside its cell, and the pixels between tiles (the gaps) are never
cut: neighbouring tiles share no edge, so a network cannot solve the task by matching
low-level edge continuations (Doersch et al. 2015, Section 3; Noroozi & Favaro 2016,
Section 3.2), and the random offsets keep their edges from lining up.

Optionally each colour channel of a tile is cut at its own small offset
(``channel_jitter``, still clamped inside the cell): Noroozi & Favaro's counter-measure
against chromatic aberration, which otherwise tells where in the lens (the image) a tile
came from.

Cutting is one ``torch.gather`` over the flattened pixels of the batch (no interpolation, so
the pixels are exactly the image's, and no Python loop over images or tiles). Positions are
``(top, left)`` pairs, int64 ``[N, T, 2]`` (or ``[N, T, C, 2]``, one per channel).
"""

from __future__ import annotations

import torch
from torch import Tensor

from fewlabels.augment._random import check_batch, draw_uniform


def draw_integers(shape: tuple[int, ...], low: int, high: int,
                  generator: torch.Generator | None, device: torch.device) -> Tensor:
    """Integers uniform in ``low..high`` (both included), int64 of ``shape`` on ``device``."""
    u = draw_uniform(shape, generator, device)
    return (u * (high - low + 1)).long().clamp_(max=high - low).add_(low)


def check_tile_geometry(image_size: int, grid: int, cell_size: int, tile_size: int,
                        jitter: int) -> None:
    """Raise ``ValueError`` unless the grid fits the image and every tile its cell."""
    if grid < 1 or cell_size < 1 or tile_size < 1 or jitter < 0:
        raise ValueError(f"grid, cell_size and tile_size must be positive and jitter at "
                         f"least 0, got {grid}, {cell_size}, {tile_size}, {jitter}")
    if grid * cell_size > image_size:
        raise ValueError(f"a grid of {grid} cells of {cell_size} px does not fit in "
                         f"{image_size} px images")
    centred = (cell_size - tile_size) // 2
    if tile_size > cell_size or jitter > centred or centred + jitter > cell_size - tile_size:
        raise ValueError(f"a tile of {tile_size} px moved by up to {jitter} px does not stay "
                         f"inside its {cell_size} px cell")


def cell_origins(count: int, image_size: int, grid: int, cell_size: int, *,
                 generator: torch.Generator | None = None,
                 device: torch.device | str = "cpu") -> Tensor:
    """The top-left pixel of every cell: int64 ``[count, grid * grid, 2]`` as (top, left),
    cells row by row, the grid at a random offset inside the image (one per image)."""
    device = torch.device(device)
    slack = image_size - grid * cell_size
    offset = draw_integers((count, 1, 2), 0, slack, generator, device)  # [N, 1, 2]
    steps = torch.arange(grid, device=device) * cell_size
    cells = torch.stack(torch.meshgrid(steps, steps, indexing="ij"), dim=-1)  # [g, g, 2]
    return offset + cells.reshape(1, grid * grid, 2)


def tile_positions(count: int, image_size: int, grid: int, cell_size: int, tile_size: int,
                   jitter: int, *, channels: int = 1, channel_jitter: int = 0,
                   generator: torch.Generator | None = None,
                   device: torch.device | str = "cpu") -> Tensor:
    """Random tile positions, one tile per cell (see the module docstring).

    Returns int64 ``[count, grid * grid, 2]`` (top, left), or ``[count, grid * grid,
    channels, 2]`` when ``channel_jitter`` > 0: each channel moved by up to
    ``channel_jitter`` pixels more, clamped so the tile stays inside its cell.
    """
    check_tile_geometry(image_size, grid, cell_size, tile_size, jitter)
    device = torch.device(device)
    origins = cell_origins(count, image_size, grid, cell_size, generator=generator,
                           device=device)  # [N, T, 2]
    tiles = grid * grid
    moves = draw_integers((count, tiles, 2), -jitter, jitter, generator, device)
    positions = origins + (cell_size - tile_size) // 2 + moves  # [N, T, 2]
    if channel_jitter <= 0:
        return positions
    shifts = draw_integers((count, tiles, channels, 2), -channel_jitter, channel_jitter,
                           generator, device)
    low = origins[:, :, None, :]  # [N, T, 1, 2]
    return torch.minimum(torch.maximum(positions[:, :, None, :] + shifts, low),
                         low + cell_size - tile_size)  # [N, T, C, 2]


def cut_tiles(images: Tensor, positions: Tensor, tile_size: int) -> Tensor:
    """The ``tile_size`` x ``tile_size`` tiles of ``images`` ``[N, C, H, W]`` whose top-left
    pixels are ``positions`` (int64 ``[N, T, 2]``, or ``[N, T, C, 2]`` per channel):
    ``[N, T, C, tile_size, tile_size]``, pixels copied exactly. Positions must keep the
    tiles inside the images (checked when the positions are on the CPU)."""
    if images.dim() != 4:
        raise ValueError(f"expected images [N, C, H, W], got shape {tuple(images.shape)}")
    count, channels, height, width = images.shape
    positions = positions.to(images.device)
    if positions.dim() == 3:
        positions = positions[:, :, None, :].expand(-1, -1, channels, -1)
    if positions.shape[0] != count or positions.shape[2] != channels:
        raise ValueError(f"positions {tuple(positions.shape)} do not match images "
                         f"{tuple(images.shape)}")
    if positions.device.type == "cpu" and positions.numel() and bool(
            (positions.amin() < 0) | (positions[..., 0].amax() > height - tile_size)
            | (positions[..., 1].amax() > width - tile_size)):
        raise ValueError("a tile position leaves the image")
    tiles = positions.shape[1]
    steps = torch.arange(tile_size, device=images.device)
    rows = positions[..., 0, None] + steps  # [N, T, C, s]
    columns = positions[..., 1, None] + steps  # [N, T, C, s]
    flat_index = rows[..., :, None] * width + columns[..., None, :]  # [N, T, C, s, s]
    # gather along the flattened pixels of each image and channel: [N, C, T*s*s]
    index = flat_index.permute(0, 2, 1, 3, 4).reshape(count, channels, -1)
    pixels = images.reshape(count, channels, height * width).gather(2, index)
    return pixels.view(count, channels, tiles, tile_size, tile_size).transpose(1, 2)


def normalize_tiles(tiles: Tensor, min_std: float) -> Tensor:
    """Each tile ``[..., C, s, s]`` to zero mean and unit standard deviation over its pixels
    and channels (Noroozi & Favaro's per-tile normalisation, so that tiles cannot be matched
    by their brightness or contrast); a standard deviation below ``min_std`` counts as
    ``min_std``, so a nearly blank tile's noise is not blown up."""
    mean = tiles.mean(dim=(-3, -2, -1), keepdim=True)
    std = tiles.std(dim=(-3, -2, -1), keepdim=True).clamp_(min=min_std)
    return (tiles - mean).div_(std)


def drop_channels(patches: Tensor, noise_std: float, *,
                  generator: torch.Generator | None = None) -> Tensor:
    """Doersch et al.'s colour dropping: of each patch ``[N, T, C, s, s]`` (C = 3) one
    channel, chosen at random per patch, is kept and the others are replaced by Gaussian
    noise of ``noise_std`` (the paper: 1/100 of the channel's standard deviation, in
    normalised units 0.01), so the network cannot locate a patch by chromatic aberration.
    A single-channel batch is returned as it is."""
    count, tiles, channels = patches.shape[:3]
    if channels == 1:
        return patches
    kept = draw_integers((count, tiles), 0, channels - 1, generator, patches.device)
    keep = torch.nn.functional.one_hot(kept, channels).to(patches.dtype)[..., None, None]
    source = generator.device if generator is not None else patches.device
    noise = torch.randn(patches.shape, generator=generator, device=source).to(patches.device)
    return patches * keep + noise.mul_(noise_std) * (1 - keep)


def gray_tiles_where(tiles: Tensor, mask: Tensor) -> Tensor:
    """The tiles ``[N, T, 3, s, s]`` of the images selected by ``mask`` (bool ``[N]``)
    turned gray (ITU-R 601 luma in every channel); a 1-channel batch as it is."""
    if tiles.shape[2] == 1:
        return tiles
    check_batch(tiles.flatten(0, 1))
    weights = torch.tensor((0.299, 0.587, 0.114), dtype=tiles.dtype, device=tiles.device)
    gray = (tiles * weights.view(1, 1, 3, 1, 1)).sum(dim=2, keepdim=True).expand_as(tiles)
    return torch.where(mask.to(tiles.device).view(-1, 1, 1, 1, 1), gray, tiles)
