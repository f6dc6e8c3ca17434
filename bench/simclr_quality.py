"""Quality at a fixed budget: SimCLR's default Fashion-MNIST recipe, pretrained for a number
of wall-clock minutes on this machine, then the label-efficiency table (linear probe and kNN
at 1, 10, 100 labels per class and all labels, mean over split seeds) next to raw pixels,
random initialisation and supervised-from-scratch.

    .venv/bin/python bench/simclr_quality.py [--minutes 10] [--out bench/results/quality]
        [-- extra pretrain options, e.g. --width 32]
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from fewlabels.cli import main as fewlabels


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", default="bench/results/quality")
    parser.add_argument("pretrain_options", nargs=argparse.REMAINDER,
                        help="after --: more options for fewlabels pretrain")
    args = parser.parse_args()
    extra = [a for a in args.pretrain_options if a != "--"]
    out = Path(args.out)
    shutil.rmtree(out / "run", ignore_errors=True)
    status = fewlabels(["pretrain", "--data", args.data, "--out", str(out / "run"),
                        "--budget-minutes", str(args.minutes), "--no-progress", *extra])
    if status:
        return status
    return fewlabels(["evaluate", "--checkpoint", str(out / "run"), "--data", args.data,
                      "--labels-per-class", "1,10,100,all", "--seeds", str(args.seeds),
                      "--json", str(out / "label_efficiency.json"),
                      "--plot", str(out / "label_efficiency.png")])


if __name__ == "__main__":
    sys.exit(main())
