"""Quality at a fixed budget: a method's default Fashion-MNIST recipe, pretrained for a number
of wall-clock minutes on this machine, then the label-efficiency table (linear probe and kNN
at 1, 10, 100 labels per class and all labels, mean over split seeds; every label counted in
the budget) next to raw pixels, random initialisation and supervised-from-scratch.

    .venv/bin/python bench/pretrain_quality.py --method dino [--minutes 10]
        [--out bench/results/dino] [--baselines none] [-- extra pretrain options]

The run's last logged collapse signal (``embedding_spread``) and its images per second are
printed with the table and stored in ``OUT/summary.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from fewlabels.cli import main as fewlabels


def last_metrics(run: Path) -> dict:
    """The last logged training values and the mean images per second of a run."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").open()]
    steps = [r for r in records if "loss" in r]
    speeds = [r["images_per_second"] for r in steps]
    end = next((r for r in reversed(records) if r.get("event") == "end"), {})
    return {"last": steps[-1] if steps else {}, "steps": steps[-1]["step"] if steps else 0,
            "mean_images_per_second": sum(speeds) / max(1, len(speeds)),
            "elapsed_seconds": end.get("elapsed_seconds")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="simclr")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--baselines", default="raw,random,supervised")
    parser.add_argument("--labels-per-class", default="1,10,100,all")
    parser.add_argument("--out", default=None, help="default bench/results/METHOD")
    parser.add_argument("pretrain_options", nargs=argparse.REMAINDER,
                        help="after --: more options for fewlabels pretrain")
    args = parser.parse_args()
    extra = [a for a in args.pretrain_options if a != "--"]
    out = Path(args.out or f"bench/results/{args.method}")
    shutil.rmtree(out / "run", ignore_errors=True)
    status = fewlabels(["pretrain", "--method", args.method, "--data", args.data,
                        "--out", str(out / "run"), "--budget-minutes", str(args.minutes),
                        "--no-progress", *extra])
    if status:
        return status
    status = fewlabels(["evaluate", "--checkpoint", str(out / "run"), "--data", args.data,
                        "--labels-per-class", args.labels_per_class, "--seeds", str(args.seeds),
                        "--baselines", args.baselines,
                        "--json", str(out / "label_efficiency.json"),
                        "--plot", str(out / "label_efficiency.png")])
    summary = last_metrics(out / "run")
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    last = summary["last"]
    print(f"{args.method}: {summary['steps']} steps, "
          f"{summary['mean_images_per_second']:.0f} images/s on average, final embedding "
          f"spread {last.get('embedding_spread', float('nan')):.3f}")
    return status


if __name__ == "__main__":
    sys.exit(main())
