"""Writing a matplotlib figure to a PNG file: the folder made, the file written atomically."""

from __future__ import annotations

import os
from pathlib import Path

from matplotlib.figure import Figure

from fewlabels.atomic import atomic_output


def save_png(figure: Figure, path: str | os.PathLike[str], dpi: float | None = None) -> Path:
    """Write ``figure`` to ``path`` as a PNG (``dpi``: the figure's own when ``None``),
    creating the folder, through :func:`fewlabels.atomic.atomic_output` so that a reader never
    sees half a file. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as stream:
        figure.savefig(stream, format="png", **({} if dpi is None else {"dpi": dpi}))
    return path
