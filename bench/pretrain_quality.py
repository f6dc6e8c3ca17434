"""Quality at a fixed budget: a method's default Fashion-MNIST recipe, pretrained for a number
of wall-clock minutes on this machine, then the label-efficiency table (linear probe and kNN
at 1, 10, 100 labels per class and all labels, mean over split seeds; every label counted in
the budget) and the clustering protocol (NMI, ARI, Hungarian accuracy of k-means on the
features and of the method's own clusters) next to raw pixels, random initialisation and
supervised-from-scratch.

    .venv/bin/python bench/pretrain_quality.py --method dino [--minutes 10]
        [--out bench/results/dino] [--baselines none] [--protocol knn,linear,clusters]
        [--evaluate-only] [-- extra pretrain options]

``--evaluate-only`` evaluates the run already in ``OUT/run`` again (another protocol, a new
evaluation) without pretraining. The run's last logged collapse signal
(``embedding_spread``), its images per second and its last epoch-level work (clusters in
use, seconds) are printed with the table and stored in ``OUT/summary.json``.
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
    work = [r for r in records if r.get("event") == "epoch_work"]
    summary = {"last": steps[-1] if steps else {}, "steps": steps[-1]["step"] if steps else 0,
               "mean_images_per_second": sum(speeds) / max(1, len(speeds)),
               "elapsed_seconds": end.get("elapsed_seconds")}
    if work:
        summary["epoch_work"] = {"last": work[-1], "count": len(work), "seconds": sum(
            r.get("epoch_work_seconds", 0.0) for r in work)}
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="simclr")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--baselines", default="raw,random,supervised")
    parser.add_argument("--labels-per-class", default="1,10,100,all")
    parser.add_argument("--protocol", default="knn,linear,clusters")
    parser.add_argument("--evaluate-only", action="store_true",
                        help="evaluate the run in OUT/run again without pretraining")
    parser.add_argument("--out", default=None, help="default bench/results/METHOD")
    parser.add_argument("pretrain_options", nargs=argparse.REMAINDER,
                        help="after --: more options for fewlabels pretrain")
    args = parser.parse_args()
    extra = [a for a in args.pretrain_options if a != "--"]
    out = Path(args.out or f"bench/results/{args.method}")
    if not args.evaluate_only:
        shutil.rmtree(out / "run", ignore_errors=True)
        status = fewlabels(["pretrain", "--method", args.method, "--data", args.data,
                            "--out", str(out / "run"), "--budget-minutes", str(args.minutes),
                            "--no-progress", *extra])
        if status:
            return status
    probes = set(args.protocol.split(",")) & {"knn", "linear"}
    name = "label_efficiency" if probes else "clusters"
    status = fewlabels(["evaluate", "--checkpoint", str(out / "run"), "--data", args.data,
                        "--protocol", args.protocol,
                        "--labels-per-class", args.labels_per_class, "--seeds", str(args.seeds),
                        "--baselines", args.baselines, "--json", str(out / f"{name}.json"),
                        *(["--plot", str(out / f"{name}.png")] if probes else [])])
    summary = last_metrics(out / "run")
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    last = summary["last"]
    print(f"{args.method}: {summary['steps']} steps, "
          f"{summary['mean_images_per_second']:.0f} images/s on average, final embedding "
          f"spread {last.get('embedding_spread', float('nan')):.3f}")
    if "epoch_work" in summary:
        work = summary["epoch_work"]
        numbers = {k: v for k, v in work["last"].items() if k not in ("step", "event")}
        print(f"epoch-level work: {work['count']} times, {work['seconds']:.0f} s in all; "
              f"the last: {numbers}")
    return status


if __name__ == "__main__":
    sys.exit(main())
