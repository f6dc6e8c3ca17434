"""`fewlabels demo`: SimCLR on Fashion-MNIST for a few minutes, then the label-efficiency
table: kNN and linear probes on the frozen features, the backbone fine-tuned and FixMatch
from it, against raw pixels, random initialisation and supervised-from-scratch. The whole
demo stays within 10 minutes on a 2-core CPU (3 minutes of pretraining, then the
evaluation; the fine-tuning and the supervised baseline train DEMO_FINETUNE_STEPS steps per
cell, FixMatch DEMO_SEMI_STEPS)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fewlabels.commands.arguments import positive_float, positive_int
from fewlabels.data.fashion_mnist import candidate_directories
from fewlabels.data.idx import has_idx_files
from fewlabels.engine.checkpoint import checkpoint_path, load_checkpoint
from fewlabels.errors import UserError

DEMO_BUDGETS = "1,10,100,all"
# The frozen-feature protocols, fine-tuning and a semi-supervised method, at every budget.
DEMO_PROTOCOLS = "knn,linear,finetune,semi"
# Steps of fine-tuning and of the supervised baseline per budget and seed (one pass over the
# labels at 'all': 938 and 469 steps), so the demo ends within 10 minutes; `fewlabels
# evaluate` trains 30 passes over the labels, in [200, 2000] steps. Measured on a shared
# 2-core CPU: both rows together cost 5% less CPU time than the baseline alone did at its
# default length (evaluation 635 against 669 CPU seconds).
DEMO_FINETUNE_STEPS = 100
# The semi row: FixMatch from the pretrained backbone, frozen (no backbone gradient: a step
# costs the forward passes), its classifier started from the probe and trained on the
# labels and the strong views' pseudo-labels of a random DEMO_SEMI_UNLABELED train images,
# DEMO_SEMI_STEPS steps per budget and seed. What a demo can afford shows FixMatch's start,
# not its gain: 60 steps (a minute and a half of the demo, 9 min 48 s in all on machine C)
# left the row below the probe (51.2 against 59.1 at 1 label per class, 72.0 against 73.4
# at 10); 20 minutes from a 10-minute SimCLR start add 2 points to the probe at 40 labels
# (docs/benchmarks.md). 30 steps: 9 min 12 s in all.
DEMO_SEMI_STEPS = 30
DEMO_SEMI_UNLABELED = 4480
DEMO_SEMI_OPTIONS = ["backbone-lr-scale=0"]


def default_demo_data() -> str:
    """The full Fashion-MNIST when it is on this machine, else the sample in the package (the
    demo never downloads)."""
    found = any(has_idx_files(directory) for directory in candidate_directories())
    return "fashion-mnist" if found else "fashion-mnist-sample"


def add_parser(subparsers: Any, argv: list[str]) -> None:  # noqa: ARG001
    parser = subparsers.add_parser(
        "demo", help="pretrain SimCLR on Fashion-MNIST for a few minutes and evaluate it",
        description="Pretrains SimCLR on Fashion-MNIST (the full set when it is on this "
                    "machine, else the sample inside the package), then prints the "
                    "label-efficiency table (kNN, linear probe, fine-tuning of the "
                    "pretrained backbone and FixMatch from it, next to raw pixels, random "
                    "initialisation and supervised training from scratch) and writes it as "
                    "JSON and a PNG plot. "
                    "About 10 minutes on a 2-core CPU with the defaults.")
    parser.add_argument("--minutes", type=positive_float, default=3.0,
                        help="minutes of pretraining (default 3)")
    parser.add_argument("--out", default="fewlabels-demo",
                        help="folder for the run, table and plot (default ./fewlabels-demo)")
    parser.add_argument("--data", default=None,
                        help="dataset (default: fashion-mnist if found, else "
                             "fashion-mnist-sample)")
    parser.add_argument("--seeds", type=positive_int, default=3,
                        help="split seeds (default 3)")
    parser.add_argument("--finetune-steps", type=positive_int, default=DEMO_FINETUNE_STEPS,
                        help="steps of fine-tuning and of the supervised baseline per label "
                             "budget and seed, rounded to whole passes over the labels "
                             f"(default {DEMO_FINETUNE_STEPS})")


def run(args: Any) -> None:
    from fewlabels.commands import evaluate, parse, pretrain

    out = Path(args.out)
    run_dir = out / "simclr"
    data = args.data or default_demo_data()
    print(f"fewlabels demo: SimCLR on {data}, {args.minutes:g} minutes of pretraining, "
          f"into {out}")
    if checkpoint_path(run_dir).exists():
        previous = load_checkpoint(run_dir)
        previous_data = previous["run"]["data"]["spec"]
        if previous_data != data:
            raise UserError(f"{run_dir} holds a demo run on {previous_data}, not {data}; "
                            "delete it or give another --out")
        if previous["finished"]:
            print(f"reusing the finished run in {run_dir} (delete it to pretrain again)")
        else:
            pretrain.run(parse(["pretrain", "--out", str(run_dir), "--resume"]))
    else:
        pretrain.run(parse([
            "pretrain", "--method", "simclr", "--data", data, "--out", str(run_dir),
            "--budget-minutes", str(args.minutes)]))
    evaluate.run(parse([
        "evaluate", "--checkpoint", str(run_dir), "--data", data,
        "--protocol", DEMO_PROTOCOLS, "--labels-per-class", DEMO_BUDGETS,
        "--seeds", str(args.seeds), "--finetune-steps", str(args.finetune_steps),
        "--semi-steps", str(DEMO_SEMI_STEPS), "--semi-unlabeled", str(DEMO_SEMI_UNLABELED),
        *(f"--semi-option={option}" for option in DEMO_SEMI_OPTIONS),
        "--json", str(out / "label_efficiency.json"), "--plot", str(out / "label_efficiency.png"),
    ]))
