"""SeLa's argument at small scale (Asano et al. 2020, section 3 and Table 1): self-labelling
with the equipartition constraint (Sinkhorn-Knopp, every cluster N/K images) against plain
arg-max self-labelling without it, which should degenerate to a few clusters.

Both runs train SeLa's defaults for the same number of epochs (equal work, so a busy machine
favours neither; SeLa relabels at least once per epoch) with the collapse monitor off, then
are evaluated with the clustering protocol (NMI, ARI, Hungarian accuracy of every head's own
clusters and of k-means on the features) and the linear probe. Recorded per run: the
clusters in use in the training labels at the last relabelling, and in each head's
predictions on the test images; the NMI of the heads and of k-means; linear-probe accuracy.

    .venv/bin/python bench/sela_equipartition.py [--epochs 6]
        [--out bench/results/sela_equipartition] [-- extra pretrain options for both runs]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from fewlabels.atomic import atomic_write_text
from fewlabels.cli import main as fewlabels

VARIANTS = {"equipartition": ["--equipartition", "true"],
            "arg-max": ["--equipartition", "false"]}


def run_variant(name: str, options: list[str], out: Path, args: argparse.Namespace) -> dict:
    run = out / name
    shutil.rmtree(run, ignore_errors=True)
    status = fewlabels(["pretrain", "--method", "sela", "--data", args.data, "--out", str(run),
                        "--epochs", str(args.epochs), "--no-progress", "--no-collapse-monitor",
                        *options, *args.extra])
    if status:
        raise SystemExit(f"pretraining {name} failed ({status})")
    evaluation = run / "evaluation.json"
    status = fewlabels(["evaluate", "--checkpoint", str(run), "--data", args.data,
                        "--protocol", "linear,clusters", "--labels-per-class", "10,all",
                        "--seeds", "2", "--baselines", "none", "--json", str(evaluation)])
    if status:
        raise SystemExit(f"evaluating {name} failed ({status})")
    results = json.loads(evaluation.read_text())
    linear = {str(c["labels_per_class"]): c["mean"] for c in results["cells"]
              if c["protocol"] == "linear"}
    records = [json.loads(line) for line in (run / "metrics.jsonl").open()]
    relabelling = [r for r in records if r.get("event") == "epoch_work"]
    return {"options": options, "linear": linear, "clusters": results.get("clusters"),
            "relabelling": relabelling}


def _cluster_line(row: dict) -> str:
    """One row of the clustering protocol (a head's own clusters or k-means), in short."""
    metrics = " ".join(f"{metric} {row[metric]['mean']:.3f}"
                       for metric in ("nmi", "ari", "accuracy", "clusters_in_use"))
    return f"{row['clusters_from']:<10} K={row['num_clusters']:<4} {metrics}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--out", default="bench/results/sela_equipartition")
    parser.add_argument("extra", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    args.extra = [a for a in args.extra if a != "--"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {name: run_variant(name, options, out, args) for name, options in VARIANTS.items()}
    atomic_write_text(out / "equipartition.json", json.dumps(results, indent=1) + "\n")
    for name, result in results.items():
        last = result["relabelling"][-1] if result["relabelling"] else {}
        in_use = {k: v for k, v in last.items() if k.startswith("clusters_in_use")}
        linear = result["linear"]
        print(f"== {name}: linear 10/class {100 * linear.get('10', float('nan')):.1f}, all "
              f"{100 * linear.get('None', float('nan')):.1f}; clusters in use in the last "
              f"training labels: {in_use}")
        for row in (result["clusters"] or {}).get("rows", []):
            print("   ", _cluster_line(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
