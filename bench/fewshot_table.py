"""The few-shot table: 5-way 1-shot and 5-shot accuracy on Fashion-MNIST's novel classes
(mean ± 95% interval over 600 episodes) for every few-shot method and for the features of
pretraining runs.

Each cell is one `fewlabels fewshot` run into ``OUT/ROW/SHOTSshot``; a cell with a
``result.json`` is read, not rerun, so the table fills over several sessions. Rows: raw
pixels, ProtoNet, Baseline, Baseline++, MAML (second and first order), fine-tuning from
supervised training on the base classes, and for every ``--init`` run the nearest class mean
on its features (as they are and L2-normalised) and fine-tuning from it (the whole backbone,
and the new classifier alone) when the ``finetune`` row is asked for. Every
cell uses the same class split and episodes (``--seed``); methods that train get
``--minutes`` of training on the base classes. At the end the Markdown table is printed and
``OUT/table.json`` written.

    .venv/bin/python bench/fewshot_table.py --minutes 10 --init bench/results/simclr/run
    .venv/bin/python bench/fewshot_table.py --report

A quick check of the script itself (seconds, not a benchmark):

    .venv/bin/python bench/fewshot_table.py --out /tmp/fewshot_check --episodes 20 \\
        --data fashion-mnist-sample --extra="--train-steps 3 --width 4 --depth 2 \\
        --base-images-per-class 20 --test-inner-steps 2"

Run on a quiet machine: the training budget is wall-clock minutes.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

from fewlabels.atomic import atomic_write_text

# row name -> (method, extra options)
METHOD_ROWS: dict[str, tuple[str, list[str]]] = {
    "pixels": ("pixels", []),
    "protonet": ("protonet", []),
    "baseline": ("baseline", []),
    "baseline++": ("baseline++", []),
    "maml": ("maml", []),
    "maml-first-order": ("maml", ["--first-order", "true"]),
    "finetune": ("finetune", []),
}
TRAINED = {"protonet", "baseline", "baseline++", "maml", "finetune"}


def rows(args: argparse.Namespace) -> dict[str, tuple[str, list[str]]]:
    """The method rows asked for, then two rows per pretraining run (its folder's parent
    names it: ``bench/results/simclr/run`` -> ``features simclr``)."""
    chosen = {name: METHOD_ROWS[name] for name in args.rows}
    for init in args.init:
        path = Path(init)
        name = path.parent.name if path.name == "run" else path.name
        chosen[f"features {name}"] = ("features", ["--init", init])
        chosen[f"features {name} (l2)"] = ("features", ["--init", init,
                                                         "--feature-normalization", "l2"])
        if "finetune" in args.rows:  # transfer from the run, beside transfer from base classes
            chosen[f"finetune {name}"] = ("finetune", ["--init", init])
            chosen[f"finetune {name} (head)"] = ("finetune", ["--init", init,
                                                              "--finetune-layers", "head"])
    return chosen


def cell_folder(out: Path, row: str, shots: int) -> Path:
    return out / row.replace(" ", "_").replace("(", "").replace(")", "") / f"{shots}shot"


def run_cell(args: argparse.Namespace, row: str, method: str, extra: list[str],
             shots: int) -> dict | None:
    """The cell's result: read when it exists, else run `fewlabels fewshot` for it."""
    folder = cell_folder(args.out, row, shots)
    result = folder / "result.json"
    if result.exists():
        print(f"{row} {shots}-shot: done")
        return json.loads(result.read_text())
    command = [sys.executable, "-m", "fewlabels", "fewshot", "--method", method,
               "--data", args.data, "--ways", str(args.ways), "--shots", str(shots),
               "--queries", str(args.queries), "--episodes", str(args.episodes),
               "--seed", str(args.seed), "--out", str(folder), *extra]
    if method in TRAINED:
        command += ["--train-minutes", str(args.minutes)]
    command += shlex.split(args.extra)
    print("running: " + " ".join(shlex.quote(part) for part in command), flush=True)
    if subprocess.run(command, check=False).returncode != 0:
        print(f"{row} {shots}-shot failed; the table goes on without it", flush=True)
        return None
    return json.loads(result.read_text())


def markdown(table: dict[str, dict[str, dict]], shots: list[int], ways: int,
             episodes: int) -> str:
    header = "| method | " + " | ".join(f"{ways}-way {k}-shot" for k in shots) + " |"
    lines = [header, "|---|" + "---:|" * len(shots)]
    for row, cells in table.items():
        values = []
        for k in shots:
            cell = cells.get(str(k))
            values.append("–" if cell is None else
                          f"{100 * cell['mean']:.2f} ± {100 * cell['interval']:.2f}")
        lines.append(f"| {row} | " + " | ".join(values) + " |")
    lines.append(f"\nAccuracy (%) on the novel classes, mean ± 95% interval over {episodes} "
                 "episodes.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results/fewshot"))
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--rows", default=",".join(METHOD_ROWS),
                        type=lambda text: [name for name in text.split(",") if name],
                        help=f"method rows (default all: {', '.join(METHOD_ROWS)})")
    parser.add_argument("--init", action="append", default=[],
                        help="a pretraining run folder whose features get rows (repeatable)")
    parser.add_argument("--ways", type=int, default=5)
    parser.add_argument("--shots", default="1,5",
                        type=lambda text: [int(k) for k in text.split(",")])
    parser.add_argument("--queries", type=int, default=15)
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--minutes", type=float, default=10.0,
                        help="training minutes of each method that trains (default 10)")
    parser.add_argument("--extra", default="",
                        help="more `fewlabels fewshot` options for every cell, one string")
    parser.add_argument("--report", action="store_true",
                        help="only read the finished cells and print the table")
    args = parser.parse_args()
    unknown = [name for name in args.rows if name not in METHOD_ROWS]
    if unknown:
        parser.error(f"unknown rows {unknown}; choose from {', '.join(METHOD_ROWS)}")
    table: dict[str, dict[str, dict]] = {}
    for row, (method, extra) in rows(args).items():
        table[row] = {}
        for shots in args.shots:
            result_path = cell_folder(args.out, row, shots) / "result.json"
            if args.report:
                cell = json.loads(result_path.read_text()) if result_path.exists() else None
            else:
                cell = run_cell(args, row, method, extra, shots)
            if cell is not None:
                table[row][str(shots)] = cell
    text = markdown(table, args.shots, args.ways, args.episodes)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "table.json", json.dumps(
        {row: {shots: {key: cell[key] for key in ("mean", "interval", "episodes")}
               | {"seconds": cell["settings"]["seconds"]}
               for shots, cell in cells.items()} for row, cells in table.items()},
        indent=2) + "\n")
    print(text)


if __name__ == "__main__":
    main()
