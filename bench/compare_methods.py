"""One label-efficiency plot and table for several benchmark rows: the results that
``pretrain_quality.py`` wrote for each method (``bench/results/METHOD/label_efficiency.json``),
one protocol, merged; the baselines are taken from whichever result has them.

    .venv/bin/python bench/compare_methods.py --protocol linear \\
        --out docs/images/methods_linear_machine_c.png bench/results/*/label_efficiency.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fewlabels.evaluate.table import Results
from fewlabels.report.plot import plot_label_efficiency


def merged(paths: list[Path], protocol: str) -> Results:
    """The cells of ``protocol`` (and supervised baselines) from every result, each
    representation once, in the order of ``paths``."""
    combined = Results()
    seen: set[tuple[str, str]] = set()
    for path in paths:
        results = Results.from_json(path.read_text())
        combined.settings = combined.settings or results.settings
        for cell in results.cells:
            key = (cell.representation, cell.protocol)
            if cell.protocol in (protocol, "supervised") and key not in seen:
                combined.cells.append(cell)
        seen.update(results.rows())
    return combined


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=Path)
    parser.add_argument("--protocol", default="linear", choices=("linear", "knn"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--title", default=None)
    args = parser.parse_args()
    results = merged(args.results, args.protocol)
    title = args.title or f"{args.protocol} probe, 10 minutes of pretraining each"
    plot_label_efficiency(results, args.out, title=title)
    print(results.table())
    print(f"plot written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
