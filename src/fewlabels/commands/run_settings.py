"""What every training command (`pretrain`, `semi`, `finetune`, `adapt`) does alike when it
starts a run or resumes one: refuse to overwrite a run, read a stopped run's settings, make
the engine's configuration and devices, and describe the run in ``run.json``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lightning_fabric import Fabric

from fewlabels.atomic import atomic_write_text
from fewlabels.engine.checkpoint import checkpoint_path
from fewlabels.engine.recipe import TrainingRecipe
from fewlabels.engine.run_control import make_fabric
from fewlabels.engine.trainer import TrainConfig
from fewlabels.errors import UserError


@dataclass(frozen=True)
class RunSettings:
    """A run's recipe, seed and length; a resumed run keeps its own but the minutes."""

    recipe: TrainingRecipe
    seed: int
    epochs_given: bool
    budget_minutes: float | None
    budget_steps: int | None = None


def new_settings(args: Any, recipe: TrainingRecipe, recipe_changes: dict[str, Any]
                 ) -> RunSettings:
    """A new run's settings: ``recipe`` (the method's with ``recipe_changes``), ``--seed``,
    ``--budget-minutes``, ``--budget-steps``; the epochs rule the schedules when ``--epochs``
    was given, the steps when ``--budget-steps`` was."""
    steps = args.budget_steps
    if steps is not None and "epochs" in recipe_changes:
        raise UserError("give the run's length as --epochs or as --budget-steps, not both")
    return RunSettings(recipe=recipe, seed=args.seed, epochs_given="epochs" in recipe_changes,
                       budget_minutes=args.budget_minutes, budget_steps=steps)


def resumed_settings(checkpoint: dict[str, Any], budget_minutes: float | None,
                     budget_steps: int | None) -> RunSettings:
    """The settings a resumed run continues with: its own, except newly given minutes. Its
    steps are its schedules' length: another ``budget_steps`` is refused."""
    stored = checkpoint["train"]
    steps = stored.get("budget_steps")
    if budget_steps is not None and budget_steps != steps:
        planned = f"{steps} steps" if steps is not None else "another length"
        raise UserError(f"this run was started for {planned}; resume it without "
                        "--budget-steps")
    return RunSettings(
        recipe=TrainingRecipe.from_dict(stored.get("recipe", {})), seed=stored["seed"],
        epochs_given=stored.get("epochs_given", False),
        budget_minutes=budget_minutes if budget_minutes is not None
        else stored.get("budget_minutes"), budget_steps=steps)


def refuse_existing_run(out: Path) -> None:
    """A new run never overwrites one: say how to continue it or where else to write."""
    if checkpoint_path(out).exists():
        raise UserError(f"{out} already holds a run; continue it with --resume, "
                        "or choose another --out")


def train_config(args: Any, out: Path, settings: RunSettings, **options: Any) -> TrainConfig:
    """The engine's configuration from a command's run, device and progress options;
    ``options`` are a command's own (``collapse_monitor``)."""
    return TrainConfig(
        run_dir=out, recipe=settings.recipe, budget_minutes=settings.budget_minutes,
        epochs_given=settings.epochs_given, budget_steps=settings.budget_steps,
        seed=settings.seed, resume=args.resume,
        devices=args.devices, accelerator=args.accelerator, num_nodes=args.num_nodes,
        precision=args.precision, progress=not args.no_progress,
        checkpoint_minutes=args.checkpoint_minutes, stop_after_steps=args.stop_after_steps,
        **options)


def start_devices(config: TrainConfig) -> Fabric:
    """The run's devices, with the global seed set so every device starts from the same
    initial weights."""
    fabric = make_fabric(config.accelerator, config.devices, config.num_nodes, config.precision)
    torch.manual_seed(config.seed)
    return fabric


def write_run_description(out: Path, run_spec: dict[str, Any], config: TrainConfig) -> None:
    """``run.json``: the run spec and the training configuration, written atomically."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "run.json", json.dumps(
        {"run": run_spec, "train": config.to_dict()}, indent=2) + "\n")
