"""Where training numbers go: a JSONL file, TensorBoard, and a progress bar."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm


class MetricsLog:
    """Appends one JSON object per logged step to ``metrics.jsonl`` and mirrors the scalars
    to TensorBoard (``RUN_DIR/tensorboard``). Only the main process writes."""

    def __init__(self, run_dir: Path, enabled: bool = True, tensorboard: bool = True) -> None:
        self.enabled = enabled
        self._file = None
        self._writer = None
        if not enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        self._file = open(run_dir / "metrics.jsonl", "a", encoding="utf-8")  # noqa: SIM115
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._writer = SummaryWriter(str(run_dir / "tensorboard"))

    def log(self, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": step, **{k: _plain(v) for k, v in values.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._writer is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, int | float) and math.isfinite(value):
                    self._writer.add_scalar(key, value, step)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._writer is not None:
            self._writer.close()


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def progress_bar(total: int, initial: int, enabled: bool) -> tqdm:
    """A progress bar over steps on stderr (main process only)."""
    return tqdm(
        total=total, initial=initial, disable=not enabled, unit="step", dynamic_ncols=True,
        mininterval=1.0 if sys.stderr.isatty() else 30.0, file=sys.stderr,
    )
