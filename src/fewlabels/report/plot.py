"""Plots of evaluation results, drawn with matplotlib's Agg renderer (no display needed)."""

from __future__ import annotations

import os
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from fewlabels.evaluate.table import Results
from fewlabels.report.figures import save_png

_LINE_STYLES = {"knn": ":", "linear": "-", "finetune": "-.", "semi": (0, (5, 1, 1, 1)),
                "supervised": "--"}
_MARKERS = {"knn": "s", "linear": "o", "finetune": "D", "semi": "*", "supervised": "^"}


def _x_positions(results: Results) -> dict[int | None, float]:
    """Budgets on a log axis; "all" sits at its real number of labels per class when known,
    and at least a factor 2 right of the largest numeric budget."""
    budgets = results.budgets()
    positions: dict[int | None, float] = {b: float(b) for b in budgets if b is not None}
    if None in budgets:
        largest = max(positions.values(), default=1.0)
        actual = float(results.settings.get("all_labels_per_class") or 0.0)
        positions[None] = max(actual, 2 * largest) if positions else max(actual, 1.0)
    return positions


def plot_label_efficiency(
    results: Results, path: str | os.PathLike[str], *, title: str | None = None
) -> Path:
    """Test accuracy (%) against labels per class (log x axis, "all" at the right), one line
    per representation × protocol with the std over seeds as error bars. Written atomically
    as a PNG; returns the path."""
    positions = _x_positions(results)
    budgets = results.budgets()
    figure = Figure(figsize=(6.4, 4.4), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    index = {(c.representation, c.protocol, c.labels_per_class): c for c in results.cells}
    # one colour per representation, one line style per protocol
    colours = {name: f"C{i % 10}" for i, name in enumerate(dict(results.rows()))}
    for representation, protocol in results.rows():
        cells = [index.get((representation, protocol, b)) for b in budgets]
        points = [(positions[c.labels_per_class], c) for c in cells if c is not None and c.values]
        if not points:
            continue
        axes.errorbar(
            [x for x, _ in points],
            [100 * c.mean for _, c in points],
            yerr=[100 * c.std for _, c in points],
            markersize=4, capsize=3, linewidth=1.5,
            color=colours[representation], linestyle=_LINE_STYLES.get(protocol, "-"),
            marker=_MARKERS.get(protocol, "o"),
            label=f"{representation} ({protocol})",
        )
    axes.set_xscale("log")
    axes.set_xticks([positions[b] for b in budgets])
    axes.set_xticklabels([str(b) if b is not None else "all" for b in budgets])
    axes.minorticks_off()
    axes.set_xlabel("labels per class")
    axes.set_ylabel("test accuracy (%)")
    axes.grid(True, alpha=0.3)
    if title is None:
        seeds = results.settings.get("seeds") or []
        title = f"label efficiency ({results.settings.get('train') or 'train'}"
        title += f", mean ± std over {len(seeds)} seeds)" if seeds else ")"
    axes.set_title(title, fontsize=10)
    if results.rows():
        axes.legend(fontsize=8, loc="lower right")
    figure.tight_layout()

    return save_png(figure, path)

