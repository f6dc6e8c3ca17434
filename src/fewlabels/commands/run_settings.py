"""What every training command (`pretrain`, `semi`, `finetune`, `adapt`) does alike when it
starts a run or resumes one: refuse to overwrite a run, and read a stopped run's settings."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fewlabels.engine.checkpoint import checkpoint_path
from fewlabels.engine.recipe import TrainingRecipe
from fewlabels.errors import UserError


@dataclass(frozen=True)
class ResumedSettings:
    """A stored run's recipe, seed and length; the budget may be changed on resuming."""

    recipe: TrainingRecipe
    seed: int
    epochs_given: bool
    budget_minutes: float | None


def resumed_settings(checkpoint: dict[str, Any], budget_minutes: float | None
                     ) -> ResumedSettings:
    """The settings a resumed run continues with: its own, except a newly given budget."""
    stored = checkpoint["train"]
    return ResumedSettings(
        recipe=TrainingRecipe.from_dict(stored.get("recipe", {})), seed=stored["seed"],
        epochs_given=stored.get("epochs_given", False),
        budget_minutes=budget_minutes if budget_minutes is not None
        else stored.get("budget_minutes"))


def refuse_existing_run(out: Path) -> None:
    """A new run never overwrites one: say how to continue it or where else to write."""
    if checkpoint_path(out).exists():
        raise UserError(f"{out} already holds a run; continue it with --resume, "
                        "or choose another --out")
