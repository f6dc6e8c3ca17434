"""A picture of clusters: one row per cluster, its images nearest the cluster's centre, its
size written beside the row (the figure the clustering papers show of discovered clusters).

The rows are chosen by :func:`choose_rows` and drawn by :func:`draw_cluster_grid` with
matplotlib's Agg renderer. Images are enlarged by a whole factor (nearest neighbour) so that
pixels stay sharp, and the PNG has exactly :func:`grid_pixel_size` pixels.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from fewlabels.report.figures import save_png

CAPTION_WIDTH = 140  # pixels left of the images, for the cluster's number, size and caption
TITLE_HEIGHT = 32
GAP = 2  # pixels between images
# A power of two: the figure's size in inches times the dpi is then exact in floating point,
# so the PNG has exactly the pixels the layout asks for.
DPI = 64


@dataclass(frozen=True)
class GridRow:
    """One cluster of the grid: its id, its size, the indices of the images drawn (nearest
    the centre first) and an optional caption (e.g. its most common class)."""

    cluster: int
    size: int
    indices: tuple[int, ...]
    caption: str = ""


def choose_rows(
    features: torch.Tensor,
    assignments: torch.Tensor,
    centres: torch.Tensor,
    *,
    per_cluster: int,
    max_rows: int | None = None,
) -> list[GridRow]:
    """The clusters that have images, largest first (ties by id), at most ``max_rows`` of
    them; for each, the ``per_cluster`` of its own images whose ``features`` [N, D] are
    nearest (Euclidean) to its centre (``centres`` [K, D]), nearest first."""
    sizes = torch.bincount(assignments, minlength=centres.shape[0])
    order = sorted((cluster for cluster in range(len(sizes)) if sizes[cluster] > 0),
                   key=lambda cluster: (-int(sizes[cluster]), cluster))
    rows = []
    for cluster in order[:max_rows]:
        members = (assignments == cluster).nonzero().flatten()
        distances = (features[members] - centres[cluster]).pow(2).sum(1)
        nearest = distances.argsort(stable=True)[:per_cluster]
        rows.append(GridRow(cluster, int(sizes[cluster]), tuple(members[nearest].tolist())))
    return rows


def tile_scale(image_size: int) -> int:
    """The whole factor images are enlarged by: to about 64 pixels, never shrunk."""
    return max(1, 64 // image_size)


def grid_pixel_size(rows: int, per_cluster: int, image_size: int) -> tuple[int, int]:
    """(width, height) in pixels of a grid of ``rows`` clusters of ``per_cluster`` images."""
    tile = image_size * tile_scale(image_size) + GAP
    return CAPTION_WIDTH + per_cluster * tile, TITLE_HEIGHT + rows * tile


def draw_cluster_grid(
    images: torch.Tensor,
    rows: list[GridRow],
    path: str | os.PathLike[str],
    *,
    per_cluster: int,
    title: str = "",
) -> Path:
    """Draw ``rows`` of ``images`` (uint8 [N, C, S, S], C = 1 or 3) as a PNG at ``path``,
    written atomically; returns the path."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"draw_cluster_grid wants uint8 images [N, 1 or 3, S, S], got "
                         f"{tuple(images.shape)}")
    side = images.shape[-1]
    scale = tile_scale(side)
    tile = side * scale + GAP
    width, height = grid_pixel_size(len(rows), per_cluster, side)
    mosaic = torch.full((len(rows) * tile, per_cluster * tile, images.shape[1]), 255,
                        dtype=torch.uint8)
    for row_number, row in enumerate(rows):
        for column, index in enumerate(row.indices[:per_cluster]):
            image = images[index].repeat_interleave(scale, 1).repeat_interleave(scale, 2)
            top, left = row_number * tile, column * tile
            mosaic[top:top + side * scale, left:left + side * scale] = image.permute(1, 2, 0)

    figure = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    FigureCanvasAgg(figure)
    axes = figure.add_axes((CAPTION_WIDTH / width, 0, 1 - CAPTION_WIDTH / width,
                            1 - TITLE_HEIGHT / height))
    axes.set_axis_off()
    if rows:
        pixels = mosaic.numpy()
        if pixels.shape[2] == 1:
            axes.imshow(pixels[:, :, 0], cmap="gray", vmin=0, vmax=255,
                        interpolation="nearest", aspect="auto")
        else:
            axes.imshow(pixels, interpolation="nearest", aspect="auto")
    for row_number, row in enumerate(rows):
        centre = height - TITLE_HEIGHT - (row_number + 0.5) * tile
        text = f"cluster {row.cluster}\n{row.size:,} images"
        if row.caption:
            text += f"\n{row.caption}"
        figure.text(6 / width, centre / height, text, ha="left", va="center", fontsize=10)
    if title:
        figure.text(0.5, 1 - TITLE_HEIGHT / 2 / height, title, ha="center", va="center",
                    fontsize=11)

    return save_png(figure, path, DPI)
