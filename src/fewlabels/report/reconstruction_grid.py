"""A picture of masked image modelling: rows of original, masked and reconstructed images.

One column per image; each row is one kind of image, named at its left. Images are enlarged
by a whole factor (nearest neighbour, :func:`~fewlabels.report.cluster_grid.tile_scale`) so
that pixels stay sharp, and the PNG has exactly :func:`reconstruction_pixel_size` pixels.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from fewlabels.report.cluster_grid import DPI, GAP, TITLE_HEIGHT, tile_scale
from fewlabels.report.figures import save_png

LABEL_WIDTH = 120  # pixels left of the images, for each row's name
MIN_WIDTH = 480  # room for a title of two lines of about 80 characters


def reconstruction_pixel_size(rows: int, columns: int, image_size: int) -> tuple[int, int]:
    """(width, height) in pixels of a grid of ``rows`` kinds of ``columns`` images."""
    tile = image_size * tile_scale(image_size) + GAP
    return max(MIN_WIDTH, LABEL_WIDTH + columns * tile), TITLE_HEIGHT + rows * tile


def draw_reconstruction_grid(rows: dict[str, torch.Tensor], path: str | os.PathLike[str],
                             *, title: str = "") -> Path:
    """Draw ``rows`` (name -> uint8 images ``[N, C, S, S]``, C = 1 or 3, the same N for every
    row) as a PNG at ``path``, written atomically, under ``title`` (at most two lines of
    about 80 characters); returns the path."""
    shapes = {tuple(images.shape) for images in rows.values()}
    if len(shapes) != 1 or len(next(iter(shapes))) != 4 or next(iter(shapes))[1] not in (1, 3):
        raise ValueError(f"draw_reconstruction_grid wants rows of uint8 images of one shape "
                         f"[N, 1 or 3, S, S], got {sorted(shapes)}")
    columns, channels, side = next(iter(shapes))[:3]
    scale = tile_scale(side)
    tile = side * scale + GAP
    width, height = reconstruction_pixel_size(len(rows), columns, side)
    mosaic = torch.full((len(rows) * tile, columns * tile, channels), 255, dtype=torch.uint8)
    for row_number, images in enumerate(rows.values()):
        enlarged = images.repeat_interleave(scale, 2).repeat_interleave(scale, 3)
        for column in range(columns):
            top, left = row_number * tile, column * tile
            mosaic[top:top + side * scale, left:left + side * scale] = \
                enlarged[column].permute(1, 2, 0)

    figure = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    FigureCanvasAgg(figure)
    axes = figure.add_axes((LABEL_WIDTH / width, 0, columns * tile / width,
                            1 - TITLE_HEIGHT / height))
    axes.set_axis_off()
    pixels = mosaic.numpy()
    if channels == 1:
        axes.imshow(pixels[:, :, 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest",
                    aspect="auto")
    else:
        axes.imshow(pixels, interpolation="nearest", aspect="auto")
    for row_number, name in enumerate(rows):
        centre = height - TITLE_HEIGHT - (row_number + 0.5) * tile
        figure.text(6 / width, centre / height, name, ha="left", va="center", fontsize=10)
    if title:
        figure.text(0.5, 1 - TITLE_HEIGHT / 2 / height, title, ha="center", va="center",
                    fontsize=9 if "\n" in title else 10, linespacing=1.1)
    return save_png(figure, path, DPI)
