"""DINO's collapse ablation at small scale (Caron et al. 2021, §5.3 and Fig. 7): DINO as it is,
with the teacher a copy of the student (no momentum), and without centring. Each run trains
for the same number of epochs (equal work, so a busy machine does not favour one) with the
collapse monitor off, then is evaluated with kNN (all labels and 10 per class); the collapse
signals logged during training (the spread of the teacher's distributions across the batch,
0 when every image gets the same one; the mean entropy of the teacher's per-image
distributions and the entropy of their batch mean) are plotted against the step.

    .venv/bin/python bench/dino_ablation.py [--epochs 4] [--out bench/results/dino_ablation]
        [--replot] [-- extra pretrain options for every run]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from fewlabels.atomic import atomic_write_text
from fewlabels.cli import main as fewlabels

VARIANTS = {
    "DINO": [],
    "teacher = student": ["--teacher-momentum", "0", "--final-teacher-momentum", "0"],
    "no centring": ["--centering", "false"],
}
SIGNALS = ("embedding_spread", "teacher_entropy", "teacher_entropy_of_mean")


def run_variant(name: str, options: list[str], out: Path, args: argparse.Namespace) -> dict:
    run = out / name.replace(" ", "_").replace("=", "eq")
    shutil.rmtree(run, ignore_errors=True)
    status = fewlabels(["pretrain", "--method", "dino", "--data", args.data, "--out", str(run),
                        "--epochs", str(args.epochs), "--no-progress",
                        "--no-collapse-monitor", *options, *args.extra])
    if status:
        raise SystemExit(f"pretraining {name} failed ({status})")
    evaluation = run / "evaluation.json"
    status = fewlabels(["evaluate", "--checkpoint", str(run), "--data", args.data,
                        "--protocol", "knn", "--labels-per-class", "10,all", "--seeds", "2",
                        "--baselines", "none", "--json", str(evaluation)])
    if status:
        raise SystemExit(f"evaluating {name} failed ({status})")
    cells = json.loads(evaluation.read_text())["cells"]
    knn = {str(cell["labels_per_class"]): cell["mean"] for cell in cells}
    records = [json.loads(line) for line in (run / "metrics.jsonl").open()]
    series = {key: [(r["step"], r[key]) for r in records if key in r] for key in SIGNALS}
    return {"options": options, "knn": knn, "series": series,
            "final": {key: values[-1][1] for key, values in series.items() if values}}


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    titles = {"embedding_spread": "spread of the teacher's distributions (0 = all the same)",
              "teacher_entropy": "mean entropy of the teacher (nats)",
              "teacher_entropy_of_mean": "entropy of the teacher's batch mean (nats)"}
    figure, axes = plt.subplots(1, 3, figsize=(15, 4))
    for axis, key in zip(axes, SIGNALS, strict=True):
        for name, result in results.items():
            steps, values = zip(*result["series"][key], strict=True)
            knn = result["knn"].get("None", float("nan"))
            axis.plot(steps, values, label=f"{name} (kNN {100 * knn:.1f}%)")
        axis.set_title(titles[key], fontsize=9)
        axis.set_xlabel("step")
    axes[0].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--out", default="bench/results/dino_ablation")
    parser.add_argument("--only", default=None, help="comma-separated variant names")
    parser.add_argument("--replot", action="store_true",
                        help="only draw OUT/ablation.png again from OUT/ablation.json")
    parser.add_argument("extra", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    args.extra = [a for a in args.extra if a != "--"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.replot:
        plot(json.loads((out / "ablation.json").read_text()), out / "ablation.png")
        return 0
    chosen = args.only.split(",") if args.only else list(VARIANTS)
    results = {name: run_variant(name, VARIANTS[name], out, args) for name in chosen}
    atomic_write_text(out / "ablation.json", json.dumps(results, indent=1) + "\n")
    plot(results, out / "ablation.png")
    print(f"{'variant':<20} {'kNN 10/class':>12} {'kNN all':>8} {'spread':>7} "
          f"{'H(teacher)':>10} {'H(mean)':>8}")
    for name, result in results.items():
        final, knn = result["final"], result["knn"]
        print(f"{name:<20} {100 * knn.get('10', float('nan')):>12.1f} "
              f"{100 * knn.get('None', float('nan')):>8.1f} "
              f"{final.get('embedding_spread', float('nan')):>7.3f} "
              f"{final.get('teacher_entropy', float('nan')):>10.2f} "
              f"{final.get('teacher_entropy_of_mean', float('nan')):>8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
