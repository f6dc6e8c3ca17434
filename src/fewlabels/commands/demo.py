"""`fewlabels demo`: SimCLR on Fashion-MNIST for a few minutes, then the label-efficiency
table against raw pixels, random initialisation and supervised-from-scratch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fewlabels.data.fashion_mnist import candidate_directories
from fewlabels.data.idx import has_idx_files
from fewlabels.engine.checkpoint import checkpoint_path, load_checkpoint
from fewlabels.errors import UserError


def default_demo_data() -> str:
    """The full Fashion-MNIST when it is on this machine, else the sample in the package (the
    demo never downloads)."""
    found = any(has_idx_files(directory) for directory in candidate_directories())
    return "fashion-mnist" if found else "fashion-mnist-sample"


def run_demo(args: Any) -> None:
    from fewlabels.cli import build_parser
    from fewlabels.commands.evaluate import run_evaluate
    from fewlabels.commands.pretrain import run_pretrain

    out = Path(args.out)
    run_dir = out / "simclr"
    data = args.data or default_demo_data()
    parser = build_parser()
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
            run_pretrain(parser.parse_args(["pretrain", "--out", str(run_dir), "--resume"]))
    else:
        run_pretrain(parser.parse_args([
            "pretrain", "--method", "simclr", "--data", data, "--out", str(run_dir),
            "--budget-minutes", str(args.minutes)]))
    run_evaluate(parser.parse_args([
        "evaluate", "--checkpoint", str(run_dir), "--data", data,
        "--labels-per-class", "1,10,100,all", "--seeds", str(args.seeds),
        "--json", str(out / "label_efficiency.json"), "--plot", str(out / "label_efficiency.png"),
    ]))
