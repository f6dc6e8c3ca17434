"""Checkpoints, written atomically (``fewlabels.atomic``: a temporary file in the same folder,
flushed, then renamed over the old one), so a run killed at any moment leaves its last
checkpoint intact; and reading them back with one-line errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from fewlabels.errors import UserError

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT_VERSION = 1


def checkpoint_path(run_dir: Path | str) -> Path:
    """The checkpoint of a run folder, or the file itself when given a file."""
    run_dir = Path(run_dir)
    return run_dir if run_dir.is_file() else run_dir / CHECKPOINT_NAME


def load_checkpoint(run_dir: Path | str) -> dict[str, Any]:
    """Load a checkpoint on the CPU; a missing or unreadable one is a :class:`UserError`."""
    path = checkpoint_path(run_dir)
    if not path.exists():
        raise UserError(f"no checkpoint at {path}; give the folder of a run (--out of pretrain)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise UserError(f"cannot read checkpoint {path} ({type(error).__name__}); "
                        "it is damaged or not a fewlabels checkpoint") from error
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT_VERSION:
        raise UserError(f"{path} is not a fewlabels checkpoint (format {FORMAT_VERSION})")
    return checkpoint
