"""The training loop: one code path for the CPU, one GPU and many (Lightning Fabric).

Per step: take this device's slice of the global batch (stateless sampling), augment it on
the device with a generator seeded for (seed, step, device), compute the method's loss, step
the optimiser with the precomputed learning rate, let the method update its teachers, log,
and checkpoint atomically every few minutes. A NaN loss stops the run with a clear message;
Ctrl-C or SIGTERM saves a checkpoint first; ``resume`` continues exactly where it stopped.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning_fabric import Fabric
from torch import nn

import fewlabels
from fewlabels.atomic import atomic_torch_save
from fewlabels.engine.checkpoint import FORMAT_VERSION, checkpoint_path, load_checkpoint
from fewlabels.engine.metrics import MetricsLog, progress_bar
from fewlabels.engine.optim import build_optimizer
from fewlabels.engine.run_control import (
    StopFlag,
    any_rank,
    steps_within_budget,
    typical_step_seconds,
)
from fewlabels.engine.sampling import StreamSampler, step_seed
from fewlabels.engine.schedule import warmup_cosine
from fewlabels.errors import UserError
from fewlabels.methods.base import Batch, Method, StepInfo

# Steps timed to fit the schedule to a wall-clock budget (they lie within the warm-up).
PROBE_STEPS = 10
# Settings of a run that may change when it resumes (where and how it runs, not what).
RESUMABLE_SETTINGS = ("run_dir", "resume", "accelerator", "devices", "num_nodes", "precision",
                      "progress", "checkpoint_minutes", "budget_minutes", "stop_after_steps")


@dataclass
class TrainConfig:
    """How to train; the method's ``recipe`` supplies the defaults the CLI starts from."""

    run_dir: Path
    epochs: int | None = 100  # None: the time budget decides
    budget_minutes: float | None = None
    batch_size: int = 512  # global, over all devices
    optimizer: str = "lars"
    learning_rate: float = 0.3  # for 256 images; scaled by batch_size / 256
    weight_decay: float = 1e-6
    warmup_epochs: float = 1.0
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
    stop_after_steps: int | None = None  # stop as if interrupted (tests, benchmarks)

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["run_dir"] = str(self.run_dir)
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
          fabric: Fabric, checkpoint: dict[str, Any] | None = None) -> TrainResult:
    """Train ``method`` on ``images`` (uint8 ``[N, C, H, W]``). ``run_spec`` describes how to
    rebuild the method (name, configs, backbone, data) and is stored in every checkpoint. With
    ``config.resume``, ``checkpoint`` is the run's checkpoint when the caller has already
    loaded it; otherwise it is read from ``config.run_dir``."""
    return Trainer(method, images, config, run_spec, fabric, checkpoint).run()


class _Meter:
    """Sums of loss, time and images since the last log line, and over the whole run."""

    def __init__(self) -> None:
        self.loss = self.augment = self.seconds = 0.0
        self.steps = self.images = 0
        self.run_augment = self.run_seconds = 0.0

    def add(self, loss: float, augment: float, seconds: float, images: int) -> None:
        self.loss += loss
        self.augment += augment
        self.seconds += seconds
        self.steps += 1
        self.images += images
        self.run_augment += augment
        self.run_seconds += seconds

    def flush(self) -> dict[str, float]:
        values = {"loss": self.loss / self.steps,
                  "images_per_second": self.images / self.seconds,
                  "augment_fraction": self.augment / self.seconds}
        self.loss = self.augment = self.seconds = 0.0
        self.steps = self.images = 0
        return values


class Trainer:
    """One run: set-up (devices, optimiser, resume), the loop, checkpoints and logs."""

    def __init__(self, method: Method, images: torch.Tensor, config: TrainConfig,
                 run_spec: dict[str, Any], fabric: Fabric,
                 checkpoint: dict[str, Any] | None = None) -> None:
        self.config, self.run_spec, self.fabric = config, run_spec, fabric
        self.run_dir = Path(config.run_dir)
        self.world, self.rank = fabric.world_size, fabric.global_rank
        if config.batch_size % self.world:
            raise UserError(f"batch size {config.batch_size} must be divisible by the "
                            f"{self.world} devices; pass a multiple of {self.world} to "
                            "--batch-size")
        self.sampler = StreamSampler(len(images), config.batch_size, config.seed)
        self.steps_per_epoch = self.sampler.steps_per_epoch
        self.warmup_steps = round(config.warmup_epochs * self.steps_per_epoch)
        self.peak_learning_rate = config.learning_rate * config.batch_size / 256
        self.budget_seconds = None if config.budget_minutes is None else 60 * config.budget_minutes

        checkpoint = self._checkpoint_to_resume(checkpoint) if config.resume else None
        if checkpoint is not None:
            method.load_state_dict(checkpoint["model"])
        if self.world > 1 and fabric.device.type == "cuda":  # SimCLR's global batch norm
            method = nn.SyncBatchNorm.convert_sync_batchnorm(method)
        self.channels_last = any(isinstance(m, nn.Conv2d) for m in method.modules())
        if self.channels_last:
            method = method.to(memory_format=torch.channels_last)
        self.method = method
        optimizer = build_optimizer(config.optimizer, method, self.peak_learning_rate,
                                    config.weight_decay)
        self.model, self.optimizer = fabric.setup(method, optimizer)
        self.images = images.to(fabric.device)
        self.generator = torch.Generator(device=fabric.device)

        self.step, self.elapsed_before, self.total_steps = 0, 0.0, None
        if checkpoint is not None:
            self.optimizer.load_state_dict(checkpoint["optimizer"])
            torch.set_rng_state(checkpoint["torch_rng"])
            self.step = checkpoint["step"]
            self.elapsed_before = checkpoint["elapsed_seconds"]
            self.total_steps = checkpoint["total_steps"]
        elif config.epochs is not None:
            self.total_steps = config.epochs * self.steps_per_epoch
        if self.total_steps is None and self.budget_seconds is None:
            raise UserError("give --epochs or --budget-minutes")
        self.learning_rates = self._schedule()
        self.elapsed = self.elapsed_before

    # -- schedule ---------------------------------------------------------------------------

    def _schedule(self) -> np.ndarray:
        """Warm-up then cosine over the total steps; while the total is not yet known (a time
        budget), just the warm-up, whose values do not depend on the total."""
        if self.total_steps is not None:
            return warmup_cosine(self.peak_learning_rate, 0.0, self.total_steps, self.warmup_steps)
        warmup = max(1, self.warmup_steps)
        return self.peak_learning_rate * np.minimum(1.0, np.arange(PROBE_STEPS + 1) / warmup)

    # -- one step ---------------------------------------------------------------------------

    def _training_step(self) -> tuple[dict[str, torch.Tensor], float, int]:
        """Views, loss, backward, optimiser step; returns the losses, the seconds spent making
        views and the images in this device's batch."""
        started = time.perf_counter()
        step, method = self.step, self.method
        epoch = step // self.steps_per_epoch
        if step % self.steps_per_epoch == 0:
            method.on_epoch_start(epoch, self.images)
        indices = self.sampler.indices(step, self.rank, self.world).to(self.fabric.device)
        batch = Batch(unlabeled=self.images[indices])
        self.generator.manual_seed(step_seed(self.config.seed, step, self.rank))
        with torch.no_grad():
            inputs = method.make_views(batch, self.generator)
            if self.channels_last:
                inputs = _to_channels_last(inputs)
        augment_seconds = time.perf_counter() - started
        for group in self.optimizer.param_groups:
            group["lr"] = float(self.learning_rates[step])
        info = StepInfo(step, epoch, self.total_steps or 0, self.generator)
        losses = self.model(inputs, info)
        self.fabric.backward(losses["loss"])
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        method.after_optimizer_step(info)
        return losses, augment_seconds, len(indices)

    # -- the loop ---------------------------------------------------------------------------

    def run(self) -> TrainResult:
        config, fabric = self.config, self.fabric
        log = MetricsLog(self.run_dir, enabled=fabric.is_global_zero,
                         tensorboard=config.tensorboard)
        if self.step == 0:
            log.log(0, {"event": "start", "world_size": self.world,
                        "steps_per_epoch": self.steps_per_epoch})
        bar = progress_bar(self.total_steps or 0, self.step,
                           enabled=config.progress and fabric.is_global_zero)
        started = last_checkpoint = time.perf_counter()
        first_step, meter, step_times = self.step, _Meter(), []
        # A budget's run fits its step count after PROBE_STEPS, and again from the average
        # pace every log interval until 90% of the budget is spent (start-up costs and a busy
        # machine make the first estimate rough; late refits move the schedule only a little).
        fitted_at_step = fitted_at_elapsed = None
        if self.total_steps is not None:
            fitted_at_step, fitted_at_elapsed = self.step, self.elapsed
        last_loss, out_of_time = math.nan, False
        self.model.train()
        try:
            with StopFlag() as stop:
                while self.total_steps is None or self.step < self.total_steps:
                    step_started = time.perf_counter()
                    losses, augment_seconds, batch_images = self._training_step()
                    last_loss = float(losses["loss"].detach())
                    if not math.isfinite(last_loss):
                        raise UserError(
                            f"the loss became {last_loss} at step {self.step}; the last good "
                            f"checkpoint is in {self.run_dir}; lower --lr or change the recipe "
                            "and start again")
                    self.step += 1
                    now = time.perf_counter()
                    self.elapsed = self.elapsed_before + (now - started)
                    meter.add(last_loss, augment_seconds, now - step_started,
                              batch_images * self.world)
                    bar.update(1)
                    if self.budget_seconds is not None and fitted_at_step is None:
                        step_times.append(now - step_started)
                        if len(step_times) >= min(PROBE_STEPS, max(3, self.warmup_steps)):
                            self._fit_budget(typical_step_seconds(step_times), bar)
                            fitted_at_step, fitted_at_elapsed = self.step, self.elapsed
                    elif self._refit_due(fitted_at_step):
                        self._fit_budget((self.elapsed - fitted_at_elapsed)
                                         / (self.step - fitted_at_step), bar)
                    if self.step % config.log_every_steps == 0 or self.step == self.total_steps:
                        self._log(log, bar, meter, losses)
                    out_of_time = (self.budget_seconds is not None
                                   and self.elapsed >= self.budget_seconds)
                    asked_to_stop = any_rank(
                        fabric, stop.requested or self.step == config.stop_after_steps)
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
            bar.close()
            log.close()
        seconds = time.perf_counter() - started
        return TrainResult(
            step=self.step, total_steps=self.total_steps or self.step, finished=finished,
            elapsed_seconds=self.elapsed,
            images_per_second=(self.step - first_step) * config.batch_size / max(seconds, 1e-9),
            augment_fraction=meter.run_augment / max(meter.run_seconds, 1e-9),
            last_loss=last_loss,
        )

    def _refit_due(self, fitted_at_step: int | None) -> bool:
        return (self.budget_seconds is not None and fitted_at_step is not None
                and self.config.epochs is None
                and self.step % self.config.log_every_steps == 0
                and self.step - fitted_at_step >= PROBE_STEPS
                and self.elapsed < 0.9 * self.budget_seconds)

    def _fit_budget(self, seconds_per_step: float, bar: Any) -> None:
        """Fix the total steps (and so the schedule) to what fits the rest of the budget."""
        assert self.budget_seconds is not None
        self.total_steps = steps_within_budget(
            self.fabric, self.budget_seconds, self.elapsed, self.step, seconds_per_step)
        self.learning_rates = self._schedule()
        bar.total = self.total_steps
        bar.refresh()

    def _log(self, log: MetricsLog, bar: Any, meter: _Meter,
             losses: dict[str, torch.Tensor]) -> None:
        values = {"epoch": (self.step - 1) // self.steps_per_epoch, **meter.flush(),
                  "lr": float(self.learning_rates[self.step - 1]),
                  "elapsed_seconds": self.elapsed}
        values.update({k: float(v.detach()) for k, v in losses.items() if k != "loss"})
        log.log(self.step, values)
        bar.set_postfix(loss=f"{values['loss']:.3f}", img_s=f"{values['images_per_second']:.0f}")

    # -- checkpoints ------------------------------------------------------------------------

    def _save(self, finished: bool) -> None:
        if self.fabric.is_global_zero:
            atomic_torch_save({
                "format": FORMAT_VERSION, "version": fewlabels.__version__, "run": self.run_spec,
                "train": self.config.to_dict(), "step": self.step,
                "total_steps": self.total_steps, "finished": finished,
                "elapsed_seconds": self.elapsed, "model": self.method.state_dict(),
                "optimizer": self.optimizer.state_dict(), "torch_rng": torch.get_rng_state(),
            }, checkpoint_path(self.run_dir))
        self.fabric.barrier()

    def _checkpoint_to_resume(self, checkpoint: dict[str, Any] | None) -> dict[str, Any]:
        if checkpoint is None:
            if not checkpoint_path(self.run_dir).exists():
                raise UserError(f"nothing to resume: no checkpoint in {self.run_dir}")
            checkpoint = load_checkpoint(self.run_dir)
        for key in ("method", "backbone"):
            saved, asked = checkpoint["run"].get(key), self.run_spec.get(key)
            if saved != asked:
                raise UserError(f"the checkpoint in {self.run_dir} was trained with {key} "
                                f"{saved}, not {asked}; resume with the same {key} or choose "
                                "another --out")
        if checkpoint.get("finished"):
            raise UserError(f"the run in {self.run_dir} has finished; nothing to resume")
        return checkpoint


def _to_channels_last(inputs: Any) -> Any:
    if isinstance(inputs, torch.Tensor) and inputs.ndim == 4:
        return inputs.contiguous(memory_format=torch.channels_last)
    if isinstance(inputs, list | tuple):
        return type(inputs)(_to_channels_last(x) for x in inputs)
    return inputs
