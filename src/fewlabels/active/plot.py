"""The active-learning curves as a PNG (matplotlib's Agg renderer, no display needed), in the
style of :mod:`fewlabels.report.plot`: test accuracy against labels, mean ± std over seeds."""

from __future__ import annotations

import os
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from fewlabels.active.results import ActiveResults
from fewlabels.report.figures import save_png


def plot_active_curves(results: ActiveResults, path: str | os.PathLike[str], *,
                       title: str | None = None) -> Path:
    """One line per strategy (and first batch) with the std over seeds as error bars; random
    selection, the baseline, drawn black and dashed. Written atomically; returns the path."""
    figure = Figure(figsize=(6.4, 4.4), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    colour = 0
    for summary in results.summaries():
        budgets = sorted(summary.accuracies)
        baseline = summary.name == "random"
        axes.errorbar(
            budgets, [100 * summary.mean(b) for b in budgets],
            yerr=[100 * summary.std(b) for b in budgets],
            markersize=3, capsize=2, linewidth=2.0 if baseline else 1.3,
            color="black" if baseline else f"C{colour % 10}",
            linestyle="--" if baseline else ("-" if summary.first == "random" else ":"),
            marker="o", label=summary.name)
        colour += 0 if baseline else 1
    axes.set_xlabel("labeled images")
    axes.set_ylabel("test accuracy (%)")
    axes.grid(True, alpha=0.3)
    seeds = sorted({curve.seed for curve in results.curves})
    axes.set_title(title or f"active learning (mean ± std over {len(seeds)} seeds)",
                   fontsize=10)
    if results.curves:
        axes.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    return save_png(figure, path)
