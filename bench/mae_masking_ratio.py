"""MAE's masking-ratio ablation at small scale: linear-probe and kNN accuracy against the
fraction of patches masked, one line per label budget, from the runs that
``pretrain_quality.py`` made for each ratio.

    for ratio in 0.25 0.5 0.75 0.9; do
      .venv/bin/python bench/pretrain_quality.py --method mae --minutes 120 \\
          --out bench/results/mae_mask$ratio --baselines none --protocol knn,linear \\
          -- --backbone vit --width 128 --depth 4 --epochs 3 --mask-ratio $ratio
    done
    .venv/bin/python bench/mae_masking_ratio.py --out docs/images/mae_masking_ratio.png \\
        bench/results/mae_mask*/label_efficiency.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from fewlabels.atomic import atomic_output  # noqa: E402


def mask_ratio(result: Path) -> float:
    """The ratio the run in ``result``'s folder trained with (its run spec)."""
    spec = json.loads((result.parent / "run" / "run.json").read_text())["run"]
    return float(spec["method_config"]["mask_ratio"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    rows: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
    for path in args.results:
        ratio = mask_ratio(path)
        for cell in json.loads(path.read_text())["cells"]:
            rows.setdefault((cell["protocol"], cell["budget"]), []).append(
                (ratio, 100 * cell["mean"], 100 * cell["std"]))
    figure, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for axis, protocol in zip(axes, ("linear", "knn"), strict=True):
        for (name, budget), points in sorted(rows.items()):
            if name != protocol:
                continue
            points.sort()
            axis.errorbar([p[0] for p in points], [p[1] for p in points],
                          yerr=[p[2] for p in points], marker="o", capsize=3, label=budget)
        axis.set_title(f"MAE, {protocol} probe")
        axis.set_xlabel("fraction of patches masked")
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy (%)")
    axes[1].legend(title="labels")
    figure.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(args.out) as handle:
        figure.savefig(handle, format="png", dpi=120)
    print("protocol  budget     " + "  ".join(f"{r:>11}" for r in sorted(
        {p[0] for points in rows.values() for p in points})))
    for (protocol, budget), points in sorted(rows.items()):
        values = "  ".join(f"{m:5.1f} ± {s:3.1f}" for _, m, s in sorted(points))
        print(f"{protocol:<8}  {budget:<9}  {values}")
    print(f"plot written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
