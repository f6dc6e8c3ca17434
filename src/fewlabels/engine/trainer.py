"""The training loop: one code path for the CPU, one GPU and many (Lightning Fabric).

Per step: set the clock (step and progress) and read every schedule from it, take this
device's slice of the global batch (stateless sampling) with the images' dataset indices,
augment it on the device with a generator seeded for (seed, step, device), compute the
method's loss, backward, unscale and clip the gradients, let the method adjust them, step the
optimiser, let the method update its teachers and queues, log, watch for collapse, and
checkpoint atomically every few minutes. A NaN loss or a collapsed representation stops the run
with a clear message; Ctrl-C or SIGTERM saves a checkpoint first; ``resume`` continues exactly
where it stopped.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lightning_fabric import Fabric

import fewlabels
from fewlabels.atomic import atomic_torch_save
from fewlabels.engine.checkpoint import FORMAT_VERSION, checkpoint_path, load_checkpoint
from fewlabels.engine.epoch_work import EpochContext, epoch_seed, optimizer_state_resetter
from fewlabels.engine.metrics import MetricsLog, Progress
from fewlabels.engine.monitor import CollapseMonitor
from fewlabels.engine.optim import build_optimizer, parameter_groups
from fewlabels.engine.recipe import TrainingRecipe
from fewlabels.engine.run_control import StopFlag, prepare_normalization, synchronized
from fewlabels.engine.sampling import step_seed
from fewlabels.engine.schedule import TrainingClock
from fewlabels.engine.streams import BatchStreams, LabeledStream
from fewlabels.errors import UserError
from fewlabels.methods.base import Method, StepInfo

# Share of a time budget kept for the final checkpoint.
BUDGET_RESERVE = 0.02
# Settings of a run that may change when it resumes (where and how it runs, not what).
RESUMABLE_SETTINGS = ("run_dir", "resume", "accelerator", "devices", "num_nodes", "precision",
                      "progress", "checkpoint_minutes", "budget_minutes", "stop_after_steps")


@dataclass
class TrainConfig:
    """How to train: the recipe (what), and where, for how long and how to report (how).

    The run's length: ``budget_steps`` optimiser steps when given (the same run on any
    machine); else ``recipe.epochs``, unless ``budget_minutes`` is given without
    ``epochs_given``, in which case the schedules follow the fraction of the budget spent.
    With steps or epochs and minutes, the schedules follow the steps and the minutes only stop
    the run early.
    """

    run_dir: Path
    recipe: TrainingRecipe = dataclasses.field(default_factory=TrainingRecipe)
    budget_minutes: float | None = None
    epochs_given: bool = False
    budget_steps: int | None = None
    seed: int = 0
    accelerator: str = "auto"
    devices: int | str = 1
    num_nodes: int = 1
    precision: str = "auto"
    resume: bool = False
    checkpoint_minutes: float = 2.0
    log_every_steps: int = 10
    progress: bool = True
    tensorboard: bool = True
    collapse_monitor: bool = True
    stop_after_steps: int | None = None  # stop as if interrupted (tests, benchmarks)

    @property
    def by_budget(self) -> bool:
        return (self.budget_minutes is not None and not self.epochs_given
                and self.budget_steps is None)

    def total_steps(self, steps_per_epoch: int) -> int | None:
        """The run's steps, or None when the schedules follow a time budget."""
        if self.budget_steps is not None:
            return self.budget_steps
        return None if self.by_budget else self.recipe.epochs * steps_per_epoch

    def to_dict(self) -> dict[str, Any]:
        values = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        values["run_dir"] = str(self.run_dir)
        values["recipe"] = self.recipe.to_dict()
        return values


@dataclass
class TrainResult:
    step: int
    total_steps: int
    finished: bool  # the schedule's last step was taken, or the time budget is spent
    elapsed_seconds: float
    images_per_second: float
    augment_fraction: float
    last_loss: float


class TrainingInterrupted(Exception):  # noqa: N818 - a stop asked for, not an error
    """Raised after a checkpoint was saved because the run was asked to stop."""

    def __init__(self, step: int, run_dir: Path) -> None:
        super().__init__(f"stopped at step {step}; the checkpoint in {run_dir} is saved; "
                         "continue with --resume")
        self.step = step


def train(method: Method, images: torch.Tensor, config: TrainConfig, run_spec: dict[str, Any],
          fabric: Fabric, checkpoint: dict[str, Any] | None = None,
          labeled: LabeledStream | None = None) -> TrainResult:
    """Train ``method`` on ``images`` (uint8 ``[N, C, H, W]``), and for a classifier run on
    the ``labeled`` stream beside them (:mod:`fewlabels.engine.streams`). ``run_spec``
    describes how to rebuild the method (name, configs, backbone, data) and is stored in every
    checkpoint. With ``config.resume``, ``checkpoint`` is the run's checkpoint when the caller
    has already loaded it; otherwise it is read from ``config.run_dir``."""
    return Trainer(method, images, config, run_spec, fabric, checkpoint, labeled).run()


class _Meter:
    """Sums of loss, time and images since the last log line, and over the whole run."""

    def __init__(self) -> None:
        self.loss = self.augment = self.seconds = 0.0
        self.steps = self.images = self.run_images = 0
        self.run_augment = self.run_seconds = 0.0

    def add(self, loss: float, augment: float, seconds: float, images: int) -> None:
        self.loss += loss
        self.augment += augment
        self.seconds += seconds
        self.steps += 1
        self.images += images
        self.run_augment += augment
        self.run_seconds += seconds
        self.run_images += images

    def flush(self) -> dict[str, float]:
        values = {"loss": self.loss / self.steps,
                  "images_per_second": self.images / self.seconds,
                  "augment_fraction": self.augment / self.seconds}
        self.loss = self.augment = self.seconds = 0.0
        self.steps = self.images = 0
        return values


class Trainer:
    """One run: set-up (devices, optimiser, schedules, resume), the loop, checkpoints, logs."""

    def __init__(self, method: Method, images: torch.Tensor, config: TrainConfig,
                 run_spec: dict[str, Any], fabric: Fabric,
                 checkpoint: dict[str, Any] | None = None,
                 labeled: LabeledStream | None = None) -> None:
        self.config, self.run_spec, self.fabric = config, run_spec, fabric
        self.recipe = recipe = config.recipe
        self.run_dir = Path(config.run_dir)
        self.world, self.rank = fabric.world_size, fabric.global_rank
        if recipe.batch_size % self.world:
            raise UserError(f"batch size {recipe.batch_size} must be divisible by the "
                            f"{self.world} devices; pass a multiple of {self.world} to "
                            "--batch-size")
        self.streams = BatchStreams(images, labeled, recipe.batch_size, config.seed,
                                    fabric.device)
        self.steps_per_epoch = self.streams.steps_per_epoch
        self.budget_seconds = (None if config.budget_minutes is None
                               else 60 * config.budget_minutes * (1 - BUDGET_RESERVE))
        self.total_steps = config.total_steps(self.steps_per_epoch)
        self.clock = TrainingClock(self.steps_per_epoch, self.total_steps,
                                   self.budget_seconds if config.by_budget else None)
        self.schedules = {"learning_rate": recipe.learning_rate_schedule(),
                          "weight_decay": recipe.weight_decay_schedule(), **method.schedules()}
        self.warmup_steps = self.schedules["learning_rate"].warmup_steps(self.steps_per_epoch)

        checkpoint = self._checkpoint_to_resume(checkpoint) if config.resume else None
        if checkpoint is not None:
            method.load_state_dict(checkpoint["model"])
        method, self.channels_last = prepare_normalization(method, fabric)
        self.method = method
        groups = parameter_groups(method, recipe.weight_decay, method.parameter_options)
        optimizer = build_optimizer(recipe.optimizer, groups, recipe.learning_rate,
                                    momentum=recipe.momentum, betas=recipe.adamw_betas,
                                    nesterov=recipe.nesterov)
        self.model, self.optimizer = fabric.setup(method, optimizer)
        self.images = self.streams.images
        self.generator = torch.Generator(device=fabric.device)
        self.monitor = CollapseMonitor()

        self.step, self.elapsed_before = 0, 0.0
        self.epoch_work_seconds = 0.0  # how long the last epoch-level work took
        if checkpoint is not None:
            self.optimizer.load_state_dict(checkpoint["optimizer"])
            torch.set_rng_state(checkpoint["torch_rng"])
            self.step = checkpoint["step"]
            self.elapsed_before = checkpoint["elapsed_seconds"]
            self.clock.load_state_dict(checkpoint.get("clock", {}))
        self.elapsed = self.elapsed_before

    # -- one step ---------------------------------------------------------------------------

    def _step_info(self) -> StepInfo:
        """Advance the clock to the current step and read every schedule."""
        self.clock.advance(self.step, self.elapsed)
        values = {name: self.clock.value(schedule) for name, schedule in self.schedules.items()}
        return StepInfo(self.step, self.step // self.steps_per_epoch, self.clock.progress,
                        self.generator, self.steps_per_epoch, values)

    def _training_step(self) -> tuple[dict[str, torch.Tensor], StepInfo, float, int]:
        """Views, loss, backward, optimiser step; returns the losses, the step's info, the
        seconds spent making views and the images in this device's batch."""
        started = time.perf_counter()
        method, info = self.method, self._step_info()
        with torch.no_grad():
            inputs, batch_images = self._make_inputs()
            if self.channels_last:
                inputs = _to_channels_last(inputs)
        augment_seconds = time.perf_counter() - started
        peak = self.schedules["learning_rate"].start
        for group in self.optimizer.param_groups:
            group["lr"] = ((info.values["learning_rate"] if group["scheduled"] else peak)
                           * group.get("lr_scale", 1.0))
            if group["decayed"]:
                group["weight_decay"] = info.values["weight_decay"]
        losses = self.model(inputs, info)
        self.fabric.backward(losses["loss"])
        self._unscale_gradients()
        if self.recipe.gradient_clip > 0:
            clip_per_tensor_(method.parameters(), self.recipe.gradient_clip)
        method.before_optimizer_step(info)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        method.after_optimizer_step(info)
        return losses, info, augment_seconds, batch_images

    def _epoch_work(self, log: MetricsLog) -> None:
        """The method's work over the whole training set before an epoch, timed and logged
        as its own record (not as a step's time). Under a time budget it is skipped when the
        last one took longer than the budget has left: no step would follow it."""
        epoch = self.step // self.steps_per_epoch
        if (self.budget_seconds is not None
                and self.elapsed + self.epoch_work_seconds >= self.budget_seconds):
            log.log(self.step, {"event": "epoch_work_skipped", "epoch": epoch,
                                "reason": "the time budget is nearly spent"})
            return
        started = time.perf_counter()
        generator = torch.Generator(device=self.fabric.device)
        generator.manual_seed(epoch_seed(self.config.seed, epoch))
        context = EpochContext(
            epoch=epoch, step=self.step, steps_per_epoch=self.steps_per_epoch,
            progress=self.clock.progress_at(self.step, self.elapsed),
            images=self.images, mean=self.method.data.mean, std=self.method.data.std,
            generator=generator, _reset_optimizer_state=optimizer_state_resetter(self.optimizer))
        numbers = self.method.on_epoch_start(context)
        # The slowest device's time, so every device makes the same decision next epoch.
        _, self.epoch_work_seconds = synchronized(self.fabric, False,
                                                  time.perf_counter() - started)
        if numbers is not None:
            log.log(self.step, {"event": "epoch_work", "epoch": epoch,
                                "epoch_work_seconds": self.epoch_work_seconds, **numbers})

    def _make_inputs(self) -> tuple[Any, int]:
        """This device's part of the step's global batch (each stream's), with the images'
        dataset indices, augmented into the method's inputs; and the number of images."""
        batch, count = self.streams.batch(self.step, self.rank, self.world)
        self.generator.manual_seed(step_seed(self.config.seed, self.step, self.rank))
        return self.method.make_views(batch, self.generator), count

    def _unscale_gradients(self) -> None:
        """With fp16 mixed precision, divide the gradients by the loss scale before they are
        clipped or changed (the scaler then skips its own unscaling at the step)."""
        scaler = getattr(getattr(self.fabric, "_precision", None), "scaler", None)
        if scaler is not None:
            scaler.unscale_(getattr(self.optimizer, "optimizer", self.optimizer))

    # -- the loop ---------------------------------------------------------------------------

    def run(self) -> TrainResult:
        config, fabric = self.config, self.fabric
        log = MetricsLog(self.run_dir, enabled=fabric.is_global_zero,
                         tensorboard=config.tensorboard)
        if self.step == 0:
            log.log(0, {"event": "start", "world_size": self.world,
                        "steps_per_epoch": self.steps_per_epoch,
                        "schedules": {k: v.to_dict() for k, v in self.schedules.items()}})
        progress = Progress(config.progress and fabric.is_global_zero, self.total_steps,
                            self.step)
        started = last_checkpoint = time.perf_counter()
        meter = _Meter()
        last_loss, out_of_time = math.nan, False
        self.model.train()
        try:
            with StopFlag() as stop:
                while self.total_steps is None or self.step < self.total_steps:
                    if self.step % self.steps_per_epoch == 0:
                        self._epoch_work(log)
                    step_started = time.perf_counter()
                    losses, info, augment_seconds, batch_images = self._training_step()
                    last_loss = float(losses["loss"].detach())
                    if not math.isfinite(last_loss):
                        raise UserError(
                            f"the loss became {last_loss} at step {self.step}; the last good "
                            f"checkpoint is in {self.run_dir}; lower --lr or change the recipe "
                            "and start again")
                    self.step += 1
                    now = time.perf_counter()
                    # Every device takes the slowest device's time and any device's stop
                    # request, so schedules and stops agree everywhere.
                    asked_to_stop, elapsed = synchronized(
                        fabric, stop.requested or self.step == config.stop_after_steps,
                        self.elapsed_before + (now - started))
                    self.elapsed = elapsed
                    meter.add(last_loss, augment_seconds, now - step_started,
                              batch_images * self.world)
                    values = {"loss": last_loss}
                    if self.step % config.log_every_steps == 0 or self.step == self.total_steps:
                        values = self._log(log, meter, losses, info)
                    progress.update(self.step, self.total_steps,
                                    self.clock.progress_at(self.step, self.elapsed), values)
                    out_of_time = (self.budget_seconds is not None
                                   and self.elapsed >= self.budget_seconds)
                    if (out_of_time or asked_to_stop
                            or now - last_checkpoint > 60 * config.checkpoint_minutes):
                        self._save(finished=False)
                        last_checkpoint = time.perf_counter()
                    if asked_to_stop:
                        raise TrainingInterrupted(self.step, self.run_dir)
                    if out_of_time:
                        break
            completed = self.total_steps is not None and self.step >= self.total_steps
            finished = completed or out_of_time  # a spent budget ends the run as well
            self._save(finished=finished)
            log.log(self.step, {"event": "end", "finished": finished,
                                "elapsed_seconds": self.elapsed})
        finally:
            progress.close()
            log.close()
        seconds = time.perf_counter() - started
        return TrainResult(
            step=self.step, total_steps=self.total_steps or self.step, finished=finished,
            elapsed_seconds=self.elapsed,
            images_per_second=meter.run_images / max(seconds, 1e-9),
            augment_fraction=meter.run_augment / max(meter.run_seconds, 1e-9),
            last_loss=last_loss,
        )

    def _log(self, log: MetricsLog, meter: _Meter, losses: dict[str, torch.Tensor],
             info: StepInfo) -> dict[str, float]:
        values = {"epoch": info.epoch, **meter.flush(), **info.values,
                  "progress": info.progress, "elapsed_seconds": self.elapsed}
        values.update({k: float(v.detach()) for k, v in losses.items() if k != "loss"})
        if "embedding_spread" in values and self.config.collapse_monitor:
            spread = values["embedding_spread"]
            if self.world > 1:
                spread = float(self.fabric.all_reduce(torch.tensor(spread, device=self.fabric
                                                                    .device), reduce_op="mean"))
            if self.monitor.collapsed(spread, past_warmup=self.step > self.warmup_steps):
                log.log(self.step, values | {"event": "collapsed"})
                raise UserError(CollapseMonitor.message(
                    self.run_spec.get("method", "the method"), spread, self.step,
                    self.method.collapse_hint))
        log.log(self.step, values)
        return values

    # -- checkpoints ------------------------------------------------------------------------

    def _save(self, finished: bool) -> None:
        if self.fabric.is_global_zero:
            atomic_torch_save({
                "format": FORMAT_VERSION, "version": fewlabels.__version__, "run": self.run_spec,
                "train": self.config.to_dict(), "step": self.step,
                "total_steps": self.total_steps, "finished": finished,
                "elapsed_seconds": self.elapsed, "clock": self.clock.state_dict(),
                "model": self.method.state_dict(),
                "optimizer": self.optimizer.state_dict(), "torch_rng": torch.get_rng_state(),
            }, checkpoint_path(self.run_dir))
        self.fabric.barrier()

    def _checkpoint_to_resume(self, checkpoint: dict[str, Any] | None) -> dict[str, Any]:
        if checkpoint is None:
            if not checkpoint_path(self.run_dir).exists():
                raise UserError(f"nothing to resume: no checkpoint in {self.run_dir}")
            checkpoint = load_checkpoint(self.run_dir)
        if checkpoint.get("format") != FORMAT_VERSION:
            raise UserError(f"the run in {self.run_dir} was made by an older fewlabels; it can "
                            "be evaluated but not resumed")
        for key in ("method", "backbone"):
            saved, asked = checkpoint["run"].get(key), self.run_spec.get(key)
            if saved != asked:
                raise UserError(f"the checkpoint in {self.run_dir} was trained with {key} "
                                f"{saved}, not {asked}; resume with the same {key} or choose "
                                "another --out")
        if checkpoint.get("finished"):
            raise UserError(f"the run in {self.run_dir} has finished; nothing to resume")
        return checkpoint


@torch.no_grad()
def clip_per_tensor_(parameters: Any, max_norm: float) -> None:
    """Scale each parameter's gradient so its L2 norm is at most ``max_norm``, tensor by
    tensor, as DINO's ``clip_gradients`` does (one large gradient does not shrink the
    others, unlike a global-norm clip)."""
    gradients = [p.grad for p in parameters if p.grad is not None]
    if not gradients:
        return
    norms = torch._foreach_norm(gradients)
    factors = [torch.clamp(max_norm / (norm + 1e-6), max=1.0) for norm in norms]
    torch._foreach_mul_(gradients, factors)


def _to_channels_last(inputs: Any) -> Any:
    if isinstance(inputs, torch.Tensor) and inputs.ndim == 4:
        return inputs.contiguous(memory_format=torch.channels_last)
    if isinstance(inputs, tuple) and hasattr(inputs, "_fields"):  # a NamedTuple of views
        return type(inputs)(*(_to_channels_last(x) for x in inputs))
    if isinstance(inputs, list | tuple):
        return type(inputs)(_to_channels_last(x) for x in inputs)
    return inputs
