"""What decides where a run happens and when it stops: Fabric set-up, precision, batch norm
across devices, stop signals, and the agreement of devices on both."""

from __future__ import annotations

import contextlib
import signal
from typing import Any

import torch
from lightning_fabric import Fabric
from lightning_fabric.strategies import DDPStrategy
from torch import nn

from fewlabels.errors import UserError
from fewlabels.models.global_batch_norm import convert_to_global_batch_norm


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
    """A launched Fabric: DDP over several devices or machines, plain on one.

    DDP does not broadcast buffers at every forward: queues, centres and memory banks are
    updated identically on every device from gathered values (a broadcast of a memory bank at
    every step would cost more than the step), and batch-norm statistics are global where the
    method asks for global batch norm."""
    processes = device_count(devices) * num_nodes
    try:
        fabric = Fabric(
            accelerator=accelerator, devices=devices, num_nodes=num_nodes,
            precision=resolve_precision(precision, accelerator),
            strategy=DDPStrategy(broadcast_buffers=False) if processes > 1 else "auto",
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


def synchronized(fabric: Fabric, stop: bool, elapsed: float) -> tuple[bool, float]:
    """Every device's view of one step's end: whether any device was asked to stop, and the
    largest elapsed time (one all-reduce; the identity on one device)."""
    if fabric.world_size == 1:
        return bool(stop), elapsed
    values = torch.tensor([float(stop), elapsed], dtype=torch.float64, device=fabric.device)
    values = fabric.all_reduce(values, reduce_op="max")
    return bool(values[0] > 0), float(values[1])


def prepare_normalization(method: nn.Module, fabric: Fabric) -> tuple[nn.Module, bool]:
    """Batch norm across devices as the method asks (``method.sync_batch_norm``): torch's
    SyncBatchNorm on GPUs, :class:`~fewlabels.models.global_batch_norm.GlobalBatchNorm` on
    other devices (torch's works on GPUs only); nothing on one device. Returns the method and
    whether it runs channels_last (see :func:`runs_channels_last`)."""
    if fabric.world_size > 1 and getattr(method, "sync_batch_norm", True):
        if fabric.device.type == "cuda":
            method = nn.SyncBatchNorm.convert_sync_batchnorm(method)
        else:
            method = convert_to_global_batch_norm(method)
    channels_last = runs_channels_last(method)
    if channels_last:
        method = method.to(memory_format=torch.channels_last)
    return method, channels_last


# Fewest input channels of a strided 1×1 convolution that trains safely channels_last. Below it,
# oneDNN 3.12 (torch 2.13's CPU build) on an AVX2-only CPU (AMD EPYC family 25 model 1) hangs or
# corrupts the heap ("corrupted double-linked list") computing that convolution's weight
# gradient: in 2026-11-29 trials 2, 3 and 4 input channels failed every time, 5 and 6 some of
# the time, 7 and 8 and more never; 3×3, stride-1 and patch convolutions never.
SAFE_STRIDED_1X1_CHANNELS = 8


def runs_channels_last(network: nn.Module) -> bool:
    """Whether training lays ``network`` out channels_last, the fast layout for convolutions:
    when it has convolutions, unless one is a strided 1×1 convolution narrower than
    :data:`SAFE_STRIDED_1X1_CHANNELS` input channels (a test-sized ResNet's shortcut; every
    default width is far wider), which then keeps the contiguous layout."""
    convolutions = [m for m in network.modules() if isinstance(m, nn.Conv2d)]
    narrow = any(conv.kernel_size == (1, 1) and conv.stride != (1, 1)
                 and conv.in_channels < SAFE_STRIDED_1X1_CHANNELS for conv in convolutions)
    return bool(convolutions) and not narrow
