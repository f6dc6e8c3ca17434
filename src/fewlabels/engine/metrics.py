"""Where training numbers go: a JSONL file, TensorBoard, and the progress display."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any, TextIO

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


class Progress:
    """Training progress on stderr (main process only).

    On a terminal, a tqdm bar over steps. In a log (stderr not a terminal), one line each time
    another ``every_percent`` of training is done, instead of thousands of carriage-return
    updates: ``step 1200/5000 (24%), 9.1 min left, loss 4.812, 4,412 img/s``. Progress is a
    fraction of steps, or of the time budget when training has one.
    """

    def __init__(self, enabled: bool, total_steps: int | None, initial_step: int,
                 every_percent: float = 5.0, stream: TextIO | None = None,
                 interactive: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled
        interactive = self.stream.isatty() if interactive is None else interactive
        self.bar = None
        if enabled and interactive:
            self.bar = tqdm(total=total_steps or 0, initial=initial_step, unit="step",
                            dynamic_ncols=True, mininterval=1.0, file=self.stream)
        self.every = every_percent / 100
        self.next_report = None
        self.started = time.perf_counter()

    def update(self, step: int, total_steps: int | None, progress: float,
               values: dict[str, float]) -> None:
        """Called every step with the fraction of training done and the latest values."""
        if not self.enabled:
            return
        if self.bar is not None:
            if total_steps is None and progress > 0:  # a budget: estimate the total
                total_steps = round(step / progress)
            if total_steps and self.bar.total != total_steps:
                self.bar.total = total_steps
            self.bar.update(step - self.bar.n)
            if "loss" in values:
                self.bar.set_postfix(loss=f"{values['loss']:.3f}",
                                     img_s=f"{values.get('images_per_second', 0):.0f}",
                                     refresh=False)
            return
        if self.next_report is None:  # the first step seen (0 or where a resume starts)
            self.next_report = (math.floor(progress / self.every) + 1) * self.every
        if progress + 1e-9 < self.next_report and progress < 1.0:
            return
        self.next_report = (math.floor(progress / self.every + 1e-9) + 1) * self.every
        seconds = time.perf_counter() - self.started
        left = seconds * (1 - progress) / max(progress, 1e-9)
        total = f"/{total_steps}" if total_steps else ""
        parts = [f"step {step}{total} ({100 * progress:.0f}%)", f"{left / 60:.1f} min left"]
        if "loss" in values:
            parts.append(f"loss {values['loss']:.4f}")
        if "images_per_second" in values:
            parts.append(f"{values['images_per_second']:,.0f} img/s")
        print(", ".join(parts), file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
