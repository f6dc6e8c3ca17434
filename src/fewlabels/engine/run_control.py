"""What decides where a run happens and when it stops: Fabric set-up, precision, stop signals,
and the number of steps that fits a wall-clock budget."""

from __future__ import annotations

import contextlib
import signal
from typing import Any

import torch
from lightning_fabric import Fabric

from fewlabels.errors import UserError


def resolve_precision(precision: str, accelerator: str) -> str:
    """``auto``: bf16 mixed precision on GPUs that have it, fp16 mixed on other GPUs, fp32 on
    the CPU (CPUs without fast bf16 run it ~100x slower)."""
    if precision != "auto":
        return precision
    if accelerator in ("auto", "cuda", "gpu") and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


def device_count(devices: int | str) -> int:
    if isinstance(devices, int):
        return devices
    if devices.isdigit():
        return int(devices)
    return 1 if devices == "auto" else len([d for d in devices.split(",") if d.strip()])


def make_fabric(accelerator: str, devices: int | str, num_nodes: int, precision: str) -> Fabric:
    """A launched Fabric: DDP over several devices or machines, plain on one."""
    processes = device_count(devices) * num_nodes
    try:
        fabric = Fabric(
            accelerator=accelerator, devices=devices, num_nodes=num_nodes,
            precision=resolve_precision(precision, accelerator),
            strategy="ddp" if processes > 1 else "auto",
        )
    except (ValueError, RuntimeError, TypeError) as error:
        first_line = str(error).splitlines()[0]
        raise UserError(f"cannot use the devices asked for: {first_line}") from error
    fabric.launch()
    return fabric


class StopFlag:
    """Set by SIGINT or SIGTERM, so the loop can save a checkpoint and stop after the step it
    is in; a second signal stops at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopFlag:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:  # noqa: ARG002
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def any_rank(fabric: Fabric, flag: bool) -> bool:
    """True on every device when ``flag`` is true on any."""
    if fabric.world_size == 1:
        return bool(flag)
    value = torch.tensor(float(flag), device=fabric.device)
    return bool(fabric.all_reduce(value, reduce_op="sum") > 0)


def steps_within_budget(
    fabric: Fabric, budget_seconds: float, elapsed: float, step: int, seconds_per_step: float
) -> int:
    """Total steps that fit the budget at ``seconds_per_step`` from here (2% kept for the
    final checkpoint); rank 0 decides for every device."""
    remaining = max(0.0, 0.98 * budget_seconds - elapsed)
    total = int(fabric.broadcast(step + int(remaining / seconds_per_step), src=0))
    return max(total, step + 1)


def typical_step_seconds(step_times: list[float]) -> float:
    """Median time of the timed steps, the first two (which pay start-up costs) left out."""
    typical = sorted(step_times[2:] or step_times)
    return typical[len(typical) // 2]
