"""The classifiers-from-few-labels table: every semi-supervised method, the supervised
baselines and fine-tuning, at fixed label budgets, split seeds and minutes of training.

Each cell is one `fewlabels semi` run into ``OUT/ROW/LABELS/seed_S`` (not kept in git); a
killed cell resumes. A finished cell leaves a small record in ``bench/records/semi_table``
(kept in git: test accuracy, steps, speed, pseudo-label columns, the machine and the day), and
a cell with a record is not rerun, so the table fills over several sessions and checkouts.
The report (``--report``) prints the Markdown tables from the records: mean and spread of test
accuracy over the seeds run, every cell's accuracy by split seed, and the machines and days the
cells ran on.

    .venv/bin/python bench/semi_table.py --rows supervised,fixmatch --labels 40,250 \\
        --seeds 0 --minutes 20 --init bench/results/simclr/run
    .venv/bin/python bench/semi_table.py --report

Rows that start from ``--init`` (the best 10-minute self-supervised checkpoint) say so in
their name. Run on a quiet machine: the budget is wall-clock minutes.

The host of these sessions changes, and a slower one trains fewer steps in the same minutes.
``--steps-from-records`` runs each new cell instead for the median steps of its row's timed
cells at the same label budget (``fewlabels semi --budget-steps``): the same training on any
machine, which may run beside other work and resume in a later session. The speed
column reports timed cells only. Not for the rows that train in rounds (``ROUNDS``): their
rounds split the run's progress, and a round-0 step on the labels alone costs a fraction of a
later one, so a time budget gives round 0 most of the steps and a step budget a third of them
(Noisy Student at 40 labels: round 0 ran 6,384 of 18,775 steps for the step budget, and
12,768 of 17,146 for a time budget on machine D). On a slower host they run alone for minutes
scaled by how much slower it is (``--minutes-scale``), so each round gets the share of the
minutes, and about the steps, that it gets there. The SimCLR reference row's images per
second (``bench/records/reference``) give a first scale; a finished cell's against the timed
cells' give the row's own, which may differ (Noisy Student at 40 labels on machine D: 2.23
from the reference rows trained 17,146 steps against machine C's 18,775, at 2.44 times fewer
images per second). The record keeps the scale; the report takes speeds only from unscaled
cells.

    .venv/bin/python bench/semi_table.py --rows vat --labels 250 --seeds 1 --steps-from-records
    .venv/bin/python bench/semi_table.py --rows noisy-student --labels 40 --seeds 1 \\
        --minutes 20 --minutes-scale 2.44
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import subprocess
import sys
from pathlib import Path

import torch

from fewlabels.atomic import atomic_write_text

RECORDS = Path(__file__).resolve().parent / "records" / "semi_table"

INIT = "{init}"
PROTECTED = ["--init", INIT, "--backbone-lr-scale", "0.1", "--head-init", "probe"]

# row name -> (method, extra options); INIT is replaced by --init.
ROWS: dict[str, tuple[str, list[str]]] = {
    "supervised": ("supervised", []),
    "finetune": ("supervised", ["--init", INIT]),
    "pseudo-label": ("pseudo-label", []),
    "pi-model": ("pi-model", []),
    "mean-teacher": ("mean-teacher", []),
    "vat": ("vat", []),
    "mixmatch": ("mixmatch", []),
    "uda": ("uda", []),
    "fixmatch": ("fixmatch", []),
    "flexmatch": ("flexmatch", []),
    "freematch": ("freematch", []),
    "noisy-student": ("noisy-student", []),
    "co-training": ("co-training", []),
    "fixmatch-from-ssl": ("fixmatch", ["--init", INIT]),
    "fixmatch-from-ssl-protected": ("fixmatch", PROTECTED),
}


def cell_folder(out: Path, row: str, labels: int, seed: int) -> Path:
    return out / row / str(labels) / f"seed_{seed}"


def record_path(records: Path, row: str, labels: int, seed: int) -> Path:
    return records / f"{row}-{labels}-seed_{seed}.json"


def machine() -> str:
    """The CPU by name, family and model (this machine's kind changes between sessions)."""
    fields: dict[str, str] = {}
    threads = torch.get_num_threads()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        return platform.processor() or platform.machine()
    return (f"{fields.get('model name', platform.machine())}, family {fields.get('cpu family')}"
            f" model {fields.get('model')}, {threads} thread{'s' * (threads != 1)}")


# Rows whose run is split into rounds by progress, with steps of different costs per round:
# a step budget does not reproduce their timed cells.
ROUNDS = {"noisy-student", "co-training"}


def timed_steps(records: Path, row: str, labels: int) -> int:
    """The median steps of ``row``'s cells at ``labels`` labels that ran for a time budget."""
    if row in ROUNDS:
        raise SystemExit(f"{row} trains in rounds of different step costs: its cells run for "
                         "--minutes, scaled on a slower machine by --minutes-scale")
    steps = [entry["step"] for entry in map(json.loads, (path.read_text() for path in
                                                        records.glob(f"{row}-{labels}-*.json")))
             if entry.get("budget_steps") is None]
    if not steps:
        raise SystemExit(f"no timed cell of {row} at {labels} labels in {records} to take the "
                         "steps from; run one with --minutes first")
    return round(statistics.median(steps))


def record_cell(folder: Path, record: Path, row: str, labels: int, seed: int,
                minutes: float) -> dict:
    """Keep a finished cell's numbers in ``record`` (the run folder is not kept); a timed cell
    whose run's budget was not the table's ``minutes`` keeps the scale it ran for."""
    summary = json.loads((folder / "result.json").read_text())
    train = json.loads((folder / "run.json").read_text())["train"]
    budget_steps = train.get("budget_steps")
    minutes_scale = (train.get("budget_minutes") or minutes) / minutes
    last = last_metrics(folder)
    finished = datetime.datetime.fromtimestamp((folder / "result.json").stat().st_mtime)
    entry = {"row": row, "labels": labels, "seed": seed,
             "test_accuracy": summary["test_accuracy"], "step": summary["step"],
             "images_per_second": summary.get("images_per_second"),
             "minutes": summary.get("minutes"), "budget_steps": budget_steps,
             "init": summary.get("init"),
             "pseudo_label_rate": last.get("pseudo_label_rate"),
             "pseudo_label_accuracy": last.get("pseudo_label_accuracy"),
             "machine": machine(), "torch": torch.__version__,
             "date": finished.date().isoformat()}
    if budget_steps is None and abs(minutes_scale - 1.0) > 1e-6:
        entry["minutes_scale"] = round(minutes_scale, 6)
    record.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(record, json.dumps(entry, indent=2) + "\n")
    return entry


def run_cell(args: argparse.Namespace, row: str, labels: int, seed: int) -> None:
    folder = cell_folder(args.out, row, labels, seed)
    record = record_path(args.records, row, labels, seed)
    if record.exists():
        print(f"{row} {labels} seed {seed}: done ({record})")
        return
    if (folder / "result.json").exists():
        record_cell(folder, record, row, labels, seed, args.minutes)
        print(f"{row} {labels} seed {seed}: recorded in {record}")
        return
    method, extra = ROWS[row]
    if labels % args.classes:
        raise SystemExit(f"{labels} labels do not split evenly over {args.classes} classes")
    command = [sys.executable, "-m", "fewlabels", "semi", "--method", method,
               "--out", str(folder), "--no-progress"]
    if (folder / "checkpoint.pt").exists():
        command.append("--resume")
    else:
        length = (["--budget-steps", str(timed_steps(args.records, row, labels))]
                  if args.steps_from_records
                  else ["--budget-minutes", f"{args.minutes * args.minutes_scale:g}"])
        command += ["--labels-per-class", str(labels // args.classes), "--seed", str(seed),
                    *length, "--data", args.data]
        command += [str(args.init) if part == INIT else part for part in extra]
        command += args.extra
    print("running", " ".join(command), flush=True)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f"seed_{seed}.log", "a") as log:
        subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT)
    record_cell(folder, record, row, labels, seed, args.minutes)


LAST_STEPS = 20  # logged steps averaged for the pseudo-label columns (one batch is noisy)


def last_metrics(folder: Path) -> dict:
    """The last logged step, with the pseudo-label rate and accuracy averaged over the last
    ``LAST_STEPS`` logged steps that have them (one step's batch of unlabeled images is
    noisy: MixMatch's accuracy moved between 0.36 and 0.52 over its last eight)."""
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    last = dict((records or [{}])[-1])
    with_rate = [r for r in records if "pseudo_label_rate" in r][-LAST_STEPS:]
    if with_rate:
        last["pseudo_label_rate"] = statistics.mean(r["pseudo_label_rate"] for r in with_rate)
        right = [r["pseudo_label_accuracy"] for r in with_rate
                 if r.get("pseudo_label_accuracy") is not None]
        last["pseudo_label_accuracy"] = statistics.mean(right) if right else None
    return last


def accuracy_text(runs: list[dict]) -> str:
    accuracies = [100 * r["test_accuracy"] for r in runs]
    if not accuracies:
        return ""
    if len(accuracies) == 1:
        return f"{accuracies[0]:.1f} (1 seed)"
    return (f"{statistics.mean(accuracies):.1f} ± {statistics.stdev(accuracies):.1f} "
            f"({len(accuracies)} seeds)")


def budget_table(cells: dict[str, dict[int, list[dict]]], budget: int) -> list[str]:
    """One label budget: accuracy, then the median steps, speed (of the timed cells) and
    pseudo-label columns."""
    lines = [f"| row ({budget} labels) | test accuracy | steps | images/s | pseudo-label rate / "
             f"accuracy (mean of the last {LAST_STEPS} logged steps) |", "|---|---|---|---|---|"]
    for row in ROWS:
        runs = cells.get(row, {}).get(budget, [])
        if not runs:
            continue
        pseudo = [(r["pseudo_label_rate"], r.get("pseudo_label_accuracy"))
                  for r in runs if r.get("pseudo_label_rate") is not None]
        rate = ""
        if pseudo:
            right = [p[1] for p in pseudo if p[1] is not None]
            rate = f"{statistics.median(p[0] for p in pseudo):.2f}" + (
                f" / {statistics.median(right):.2f}" if right else "")
        timed = [r.get("images_per_second") or 0 for r in runs
                 if r.get("budget_steps") is None and "minutes_scale" not in r]
        speed = f"{statistics.median(timed):,.0f}" if timed else ""
        lines.append(f"| {row} | {accuracy_text(runs)} | "
                     f"{statistics.median(r['step'] for r in runs):,.0f} | {speed} | {rate} |")
    return lines


def seed_table(cells: dict[str, dict[int, list[dict]]], budgets: list[int]) -> list[str]:
    """Every cell's test accuracy, one column per budget and split seed: while the seeds fill
    in unevenly, rows compare fairly only on the seeds they share, and a split moves a row by
    itself (supervised-only at 40 labels: 46.0 on seed 0, 55.4 on seed 1)."""
    seeds = sorted({r["seed"] for row in cells.values() for runs in row.values() for r in runs})
    columns = [(b, s) for b in budgets for s in seeds]
    lines = ["| row | " + " | ".join(f"{b} labels, seed {s}" for b, s in columns) + " |",
             "|---|" + "---|" * len(columns)]
    for row in ROWS:
        if row not in cells:
            continue
        by_cell = {(b, r["seed"]): r for b, runs in cells[row].items() for r in runs}
        lines.append(f"| {row} | " + " | ".join(
            f"{100 * by_cell[c]['test_accuracy']:.1f}" if c in by_cell else "" for c in columns)
            + " |")
    return lines


def report(records: Path) -> str:
    """The accuracy of every row at every budget (mean over the seeds, then per seed), one
    table per budget with its steps, speed and pseudo-label columns, then the machines and
    days the cells ran on."""
    cells: dict[str, dict[int, list[dict]]] = {}
    for path in sorted(records.glob("*.json")):
        entry = json.loads(path.read_text())
        cells.setdefault(entry["row"], {}).setdefault(entry["labels"], []).append(entry)
    budgets = sorted({labels for row in cells.values() for labels in row})
    lines = ["| row | " + " | ".join(f"{b} labels" for b in budgets) + " |",
             "|---|" + "---|" * len(budgets)]
    lines += [f"| {row} | " + " | ".join(accuracy_text(cells[row].get(b, [])) for b in budgets)
              + " |" for row in ROWS if row in cells]
    lines += [""] + seed_table(cells, budgets)
    for budget in budgets:
        lines += [""] + budget_table(cells, budget)
    ran_on: dict[str, list[dict]] = {}
    for row in cells.values():
        for runs in row.values():
            for r in runs:
                ran_on.setdefault(r["machine"], []).append(r)
    lines.append("")
    for name, runs in sorted(ran_on.items()):
        by_steps = sum(r.get("budget_steps") is not None for r in runs)
        scales = sorted({r["minutes_scale"] for r in runs if "minutes_scale" in r})
        scaled = sum("minutes_scale" in r for r in runs)
        timed = len(runs) - by_steps - scaled
        kinds = [f"{timed} timed"] * (timed > 0) + [
            f"{scaled} timed for the minutes × {' or '.join(f'{s:g}' for s in scales)}"] * (
            scaled > 0) + [f"{by_steps} for the timed cells' steps"] * (by_steps > 0)
        lines.append(f"ran on {name}: {', '.join(sorted({r['date'] for r in runs}))} "
                     f"(cells: {', '.join(kinds)})")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default=",".join(ROWS),
                        help=f"comma-separated rows, of: {', '.join(ROWS)}")
    parser.add_argument("--labels", default="40,250", help="label budgets (total labels)")
    parser.add_argument("--seeds", default="0,1,2", help="split seeds")
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--minutes-scale", type=float, default=1.0,
                        help="run timed cells for --minutes times this, alone on a slower "
                             "host: how much faster the timed cells' machine runs the row")
    parser.add_argument("--steps-from-records", action="store_true",
                        help="run each new cell for the median steps of its row's timed cells "
                             "at the same label budget, not for --minutes")
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--init", type=Path, default=Path("bench/results/simclr/run"),
                        help="pretrained run for the rows that start from one")
    parser.add_argument("--out", type=Path, default=Path("bench/results/semi"),
                        help="where the runs go (their folders are not kept in git)")
    parser.add_argument("--records", type=Path, default=RECORDS,
                        help="where each finished cell's numbers are kept (in git)")
    parser.add_argument("--report", action="store_true", help="only print the table")
    parser.add_argument("extra", nargs="*", help="options after -- go to every run")
    args = parser.parse_args()
    if args.minutes_scale <= 0:
        parser.error(f"--minutes-scale must be positive, got {args.minutes_scale:g}")
    if not args.report:
        unknown = [row for row in args.rows.split(",") if row not in ROWS]
        if unknown:
            parser.error(f"unknown rows {unknown}; rows: {', '.join(ROWS)}")
        for seed in (int(s) for s in args.seeds.split(",")):
            for labels in (int(n) for n in args.labels.split(",")):
                for row in args.rows.split(","):
                    run_cell(args, row, labels, seed)
    print(report(args.records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
