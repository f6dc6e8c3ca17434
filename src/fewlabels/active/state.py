"""The state of a real labelling loop, in a directory, and the CSV files a person labels.

``DIR/state.json`` is the one source of truth: the data and run it is about, the class names,
every label given so far (by stable image id), the round, and the batch waiting for labels
(ids, the model's guess and its calibrated confidence). ``DIR/to-label-NNN.csv`` is made from
it: one row per image of round NNN with the columns

    id, path, label, guess, confidence

``id`` is the image's stable id (a folder image's path relative to the folder, else
``PART/INDEX``), ``path`` the file to open (empty for data that is not a folder), ``label``
blank for the person to fill in with a class name, ``guess`` and ``confidence`` the current
model's prediction (blank before there is a model).

Both files are written atomically, the state first: a run stopped between the two leaves a
state whose CSV is missing, and the next call writes that CSV again from the state, so the
labeled set and the batch asked for are exactly those of an uninterrupted run. Images are
found by id every call, never by position: files added to the folder, or a different order,
change nothing about which image a label belongs to.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fewlabels.atomic import atomic_write_text
from fewlabels.errors import UserError

STATE_FILE = "state.json"
STATE_VERSION = 1
CSV_COLUMNS = ("id", "path", "label", "guess", "confidence")
CONFIDENCE_DIGITS = 4


def batch_file_name(round_number: int) -> str:
    return f"to-label-{round_number:03d}.csv"


@dataclass
class PendingImage:
    """An image asked for: its id, file path (or ``""``), the model's guess and confidence
    (``""`` / ``None`` before there is a model)."""

    id: str
    path: str = ""
    guess: str = ""
    confidence: float | None = None


@dataclass
class ActiveState:
    """What ``state.json`` holds (see the module docstring)."""

    data: str
    class_names: list[str]
    init: str | None = None
    strategy: str = "margin"
    seed: int = 0
    round: int = 0
    labels: dict[str, str] = field(default_factory=dict)
    pending: list[PendingImage] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def batch_file(self) -> str:
        return batch_file_name(self.round)

    def save(self, directory: Path) -> None:
        record = {"version": STATE_VERSION, **asdict(self)}
        atomic_write_text(directory / STATE_FILE, json.dumps(record, indent=1) + "\n")

    @classmethod
    def load(cls, directory: Path) -> ActiveState | None:
        """The state in ``directory``, or ``None`` when there is none yet."""
        path = directory / STATE_FILE
        if not path.exists():
            return None
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            if record.pop("version", None) != STATE_VERSION:
                raise ValueError("unknown version")
            record["pending"] = [PendingImage(**item) for item in record["pending"]]
            return cls(**record)
        except (ValueError, KeyError, TypeError) as error:
            raise UserError(f"{path} is not an active-learning state this version can read "
                            f"({error}); start a new one with another --state") from None


def batch_csv_text(pending: list[PendingImage]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for image in pending:
        confidence = ("" if image.confidence is None
                      else f"{image.confidence:.{CONFIDENCE_DIGITS}f}")
        writer.writerow([image.id, image.path, "", image.guess, confidence])
    return buffer.getvalue()


def write_batch_csv(directory: Path, state: ActiveState) -> Path:
    path = directory / state.batch_file
    atomic_write_text(path, batch_csv_text(state.pending))
    return path


def read_batch_labels(path: Path, pending: list[PendingImage], class_names: list[str]
                      ) -> dict[str, str]:
    """The labels a person filled into ``path``, ``{id: class name}``, checked: every row an
    id of ``pending`` (once), every label a class name, every pending id present. Any
    problem is a one-line :class:`UserError` naming the file and the row (its line number)."""
    asked = {image.id for image in pending}
    known = set(class_names)
    classes = ", ".join(class_names)
    try:
        text = path.read_text(encoding="utf-8-sig")  # a spreadsheet may add a BOM
    except UnicodeDecodeError as error:
        raise UserError(f"{path} is not UTF-8 text ({error.reason}); save it as UTF-8 CSV"
                        ) from None
    reader = csv.reader(io.StringIO(text))
    labels: dict[str, str] = {}
    try:
        header = [cell.strip() for cell in next(reader, [])]
        missing = [name for name in ("id", "label") if name not in header]
        if missing:
            raise UserError(f"{path}: the header line has no {' or '.join(missing)} column; "
                            f"keep the header {','.join(CSV_COLUMNS)}")
        id_column, label_column = header.index("id"), header.index("label")
        for cells in reader:
            row = f"{path} row {reader.line_num}"
            if not any(cell.strip() for cell in cells):
                continue  # blank lines are harmless
            if len(cells) != len(header):
                raise UserError(f"{row}: {len(cells)} fields where the header has "
                                f"{len(header)}; a label with a comma needs quotes")
            image_id, label = cells[id_column].strip(), cells[label_column].strip()
            if image_id not in asked:
                raise UserError(f"{row}: id {image_id!r} was not asked for in this round; "
                                "do not add or rename rows")
            if image_id in labels:
                raise UserError(f"{row}: id {image_id!r} appears twice; keep one row per "
                                "image")
            if not label:
                raise UserError(f"{row} (id {image_id!r}) has no label; fill in the label "
                                f"column of every row with one of: {classes}")
            if label not in known:
                raise UserError(f"{row} (id {image_id!r}): unknown label {label!r}; use one "
                                f"of: {classes} (or add classes with --classes)")
            labels[image_id] = label
    except csv.Error as error:
        raise UserError(f"{path} row {reader.line_num}: not valid CSV ({error})") from None
    absent = [image.id for image in pending if image.id not in labels]
    if absent:
        more = f" and {len(absent) - 1} more" if len(absent) > 1 else ""
        raise UserError(f"{path}: no row for id {absent[0]!r}{more} asked for in this round; "
                        "restore the rows and label them")
    return labels
