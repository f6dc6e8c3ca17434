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
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lightning_fabric import Fabric
from torch import nn

import fewlabels
from fewlabels.engine.checkpoint import atomic_torch_save, checkpoint_path, load_checkpoint
from fewlabels.engine.metrics import MetricsLog, progress_bar
from fewlabels.engine.optim import build_optimizer
from fewlabels.engine.sampling import StreamSampler, step_seed
from fewlabels.engine.schedule import warmup_cosine
from fewlabels.errors import UserError
from fewlabels.methods.base import Batch, Method, StepInfo

FORMAT_VERSION = 1


@dataclass
class TrainConfig:
    """How to train; the method's ``recipe`` supplies the defaults the CLI starts from."""

    run_dir: Path
    epochs: int | None = 100
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


class TrainingInterrupted(Exception):
    """Raised after a checkpoint was saved because the run was asked to stop."""

    def __init__(self, step: int, run_dir: Path) -> None:
        super().__init__(f"stopped at step {step}; the checkpoint in {run_dir} is saved; "
                         "continue with --resume")
        self.step = step


def resolve_precision(precision: str, accelerator: str) -> str:
    """``auto``: bf16 mixed precision on GPUs that have it, fp16 mixed on other GPUs, fp32 on
    the CPU (CPUs without fast bf16 run it ~100x slower)."""
    if precision != "auto":
        return precision
    if accelerator in ("auto", "cuda", "gpu") and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


def make_fabric(config: TrainConfig) -> Fabric:
    """A launched Fabric for ``config``'s devices and precision."""
    try:
        fabric = Fabric(
            accelerator=config.accelerator, devices=config.devices, num_nodes=config.num_nodes,
            precision=resolve_precision(config.precision, config.accelerator),
            strategy="ddp" if _device_count(config.devices) * config.num_nodes > 1 else "auto",
        )
    except (ValueError, RuntimeError, TypeError) as error:
        raise UserError(f"cannot use the devices asked for: {str(error).splitlines()[0]}") from error
    fabric.launch()
    return fabric


def _device_count(devices: int | str) -> int:
    if isinstance(devices, int):
        return devices
    if devices.isdigit():
        return int(devices)
    return 1 if devices == "auto" else len([d for d in devices.split(",") if d.strip()])


def _uses_convolutions(module: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in module.modules())


def _to_channels_last(inputs: Any) -> Any:
    if isinstance(inputs, torch.Tensor) and inputs.ndim == 4:
        return inputs.contiguous(memory_format=torch.channels_last)
    if isinstance(inputs, list | tuple):
        return type(inputs)(_to_channels_last(x) for x in inputs)
    return inputs


class _StopFlag:
    """Set by SIGINT/SIGTERM; the loop saves a checkpoint and stops at the next step."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:  # noqa: ARG002
        if self.requested:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def train(
    method: Method,
    images: torch.Tensor,
    config: TrainConfig,
    run_spec: dict[str, Any],
    fabric: Fabric,
) -> TrainResult:
    """Train ``method`` on ``images`` (uint8 ``[N, C, H, W]``, all on the CPU).

    ``run_spec`` describes how to rebuild the method (name, configs, backbone, data) and is
    stored in every checkpoint.
    """
    run_dir = Path(config.run_dir)
    world, rank = fabric.world_size, fabric.global_rank
    if config.batch_size % world:
        raise UserError(f"batch size {config.batch_size} must be divisible by the "
                        f"{world} devices; pass a multiple of {world} to --batch-size")
    sampler = StreamSampler(len(images), config.batch_size, config.seed)
    steps_per_epoch = sampler.steps_per_epoch
    warmup_steps = round(config.warmup_epochs * steps_per_epoch)
    learning_rate = config.learning_rate * config.batch_size / 256

    checkpoint = _load_for_resume(config, run_spec) if config.resume else None
    if checkpoint is not None:
        method.load_state_dict(checkpoint["model"])
    if world > 1 and fabric.device.type == "cuda":  # SimCLR's global batch norm
        method = nn.SyncBatchNorm.convert_sync_batchnorm(method)
    channels_last = _uses_convolutions(method)
    if channels_last:
        method = method.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(config.optimizer, method, learning_rate, config.weight_decay)
    model, optimizer = fabric.setup(method, optimizer)
    images = images.to(fabric.device)

    start_step, elapsed_before, total_steps = 0, 0.0, None
    if checkpoint is not None:
        optimizer.load_state_dict(checkpoint["optimizer"])
        torch.set_rng_state(checkpoint["torch_rng"])
        start_step = checkpoint["step"]
        elapsed_before = checkpoint["elapsed_seconds"]
        total_steps = checkpoint["total_steps"]
    elif config.epochs is not None:
        total_steps = config.epochs * steps_per_epoch
    budget_seconds = None if config.budget_minutes is None else config.budget_minutes * 60

    def schedule_for(total: int) -> Any:
        return warmup_cosine(learning_rate, 0.0, total, warmup_steps)

    # Without a step count the budget decides it: time a few warm-up steps (whose learning
    # rate does not depend on the total), then fix the schedule so it ends with the budget.
    probe_steps = 0 if total_steps is not None else max(3, min(10, warmup_steps))
    provisional_total = 10**9
    # While probing, the warm-up's own values (or the peak, for a warm-up shorter than the probe).
    learning_rates = (schedule_for(total_steps) if total_steps else
                      [learning_rate * min(1.0, s / max(1, warmup_steps)) for s in range(probe_steps)])

    log = MetricsLog(run_dir, enabled=fabric.is_global_zero, tensorboard=config.tensorboard)
    if fabric.is_global_zero and checkpoint is None:
        log.log(0, {"event": "start", "world_size": world, "steps_per_epoch": steps_per_epoch})

    state = {"step": start_step, "total": total_steps, "elapsed": elapsed_before}

    def save(finished: bool) -> None:
        if fabric.is_global_zero:
            atomic_torch_save({
                "format": FORMAT_VERSION, "version": fewlabels.__version__, "run": run_spec,
                "train": config.to_dict(), "step": state["step"], "total_steps": state["total"],
                "finished": finished, "elapsed_seconds": state["elapsed"],
                "model": _unwrap(method).state_dict(), "optimizer": optimizer.state_dict(),
                "torch_rng": torch.get_rng_state(),
            }, checkpoint_path(run_dir))
        fabric.barrier()

    generator = torch.Generator(device=fabric.device)
    bar = progress_bar(total_steps or 0, start_step, enabled=config.progress and fabric.is_global_zero)
    started = time.perf_counter()
    last_checkpoint = started
    window = {"loss": 0.0, "count": 0, "augment": 0.0, "time": 0.0, "images": 0}
    step_times: list[float] = []
    totals = {"augment": 0.0, "time": 0.0}
    last_loss = float("nan")
    model.train()
    with _StopFlag() as stop:
        step = start_step
        while state["total"] is None or step < state["total"]:
            t0 = time.perf_counter()
            epoch = step // steps_per_epoch
            if step % steps_per_epoch == 0:
                _unwrap(method).on_epoch_start(epoch, images)
            batch = Batch(unlabeled=images[sampler.indices(step, rank, world).to(fabric.device)])
            generator.manual_seed(step_seed(config.seed, step, rank))
            with torch.no_grad():
                inputs = _unwrap(method).make_views(batch, generator)
                if channels_last:
                    inputs = _to_channels_last(inputs)
            t_augment = time.perf_counter() - t0
            for group in optimizer.param_groups:
                group["lr"] = float(learning_rates[step])
            info = StepInfo(step, epoch, state["total"] or provisional_total, generator)
            losses = model(inputs, info)
            loss = losses["loss"]
            fabric.backward(loss)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            _unwrap(method).after_optimizer_step(info)
            last_loss = float(loss.detach())
            if not math.isfinite(last_loss):
                log.close()
                raise UserError(
                    f"the loss became {last_loss} at step {step} (epoch {epoch}); the last good "
                    f"checkpoint is in {run_dir}; lower --lr or change the recipe and start again"
                )
            step += 1
            state["step"] = step
            now = time.perf_counter()
            state["elapsed"] = elapsed_before + (now - started)
            window["loss"] += last_loss
            window["count"] += 1
            window["augment"] += t_augment
            totals["augment"] += t_augment
            totals["time"] += now - t0
            window["time"] += now - t0
            window["images"] += len(batch.unlabeled) * world

            bar.update(1)
            if state["total"] is None:
                step_times.append(now - t0)
                if len(step_times) >= probe_steps:
                    state["total"] = _steps_within_budget(
                        fabric, budget_seconds, state["elapsed"], step, step_times)
                    learning_rates = schedule_for(state["total"])
                    bar.total = state["total"]
                    bar.refresh()
            if step % config.log_every_steps == 0 or step == state["total"]:
                values = {
                    "epoch": epoch, "loss": window["loss"] / window["count"],
                    "lr": float(learning_rates[step - 1]),
                    "images_per_second": window["images"] / window["time"],
                    "augment_fraction": window["augment"] / window["time"],
                    "elapsed_seconds": state["elapsed"],
                }
                values.update({k: float(v.detach()) for k, v in losses.items() if k != "loss"})
                log.log(step, values)
                bar.set_postfix(loss=f"{values['loss']:.3f}",
                                img_s=f"{values['images_per_second']:.0f}")
                window = {"loss": 0.0, "count": 0, "augment": 0.0, "time": 0.0, "images": 0}
            out_of_time = budget_seconds is not None and state["elapsed"] >= budget_seconds
            asked_to_stop = _any_rank(fabric, stop.requested or step == config.stop_after_steps)
            if out_of_time or asked_to_stop or now - last_checkpoint > 60 * config.checkpoint_minutes:
                save(finished=False)
                last_checkpoint = time.perf_counter()
            if asked_to_stop:
                bar.close()
                log.close()
                raise TrainingInterrupted(step, run_dir)
            if out_of_time:
                break
    out_of_time = budget_seconds is not None and state["elapsed"] >= budget_seconds
    completed = state["total"] is not None and step >= state["total"]
    finished = completed or out_of_time  # a spent budget ends the run as well
    save(finished=finished)
    bar.close()
    total_time = time.perf_counter() - started
    log.log(step, {"event": "end", "finished": finished, "elapsed_seconds": state["elapsed"]})
    log.close()
    return TrainResult(
        step=step, total_steps=state["total"] or step, finished=finished,
        elapsed_seconds=state["elapsed"],
        images_per_second=(step - start_step) * config.batch_size / max(total_time, 1e-9),
        augment_fraction=totals["augment"] / max(totals["time"], 1e-9), last_loss=last_loss,
    )


def _steps_within_budget(
    fabric: Fabric, budget_seconds: float | None, elapsed: float, step: int,
    step_times: list[float],
) -> int:
    """Total steps that fit the wall-clock budget, from the median time of the steps so far
    (the first two, which include start-up costs, left out); the same on every device."""
    if budget_seconds is None:
        raise UserError("give --epochs or --budget-minutes")
    typical = sorted(step_times[2:] or step_times)
    seconds_per_step = typical[len(typical) // 2]
    remaining = max(0.0, 0.98 * budget_seconds - elapsed)
    total = step + int(remaining / seconds_per_step)
    total = int(fabric.broadcast(total, src=0))
    return max(total, step + 1)


def _any_rank(fabric: Fabric, flag: bool) -> bool:
    if fabric.world_size == 1:
        return bool(flag)
    value = torch.tensor(float(flag), device=fabric.device)
    return bool(fabric.all_reduce(value, reduce_op="sum") > 0)


def _unwrap(module: nn.Module) -> Method:
    return getattr(module, "module", module)


def _load_for_resume(config: TrainConfig, run_spec: dict[str, Any]) -> dict[str, Any] | None:
    path = checkpoint_path(config.run_dir)
    if not path.exists():
        raise UserError(f"nothing to resume: no checkpoint in {config.run_dir}")
    checkpoint = load_checkpoint(config.run_dir)
    for key in ("method", "backbone"):
        saved, asked = checkpoint["run"].get(key), run_spec.get(key)
        if saved != asked:
            raise UserError(
                f"the checkpoint in {config.run_dir} was trained with {key} {saved}, "
                f"not {asked}; resume with the same {key} or choose another --out"
            )
    if checkpoint.get("finished"):
        raise UserError(f"the run in {config.run_dir} has finished; nothing to resume")
    return checkpoint
