"""This machine's peak fp32 matrix-multiply rate, as the best of two kernels measured now.

A 2048×2048 ``torch.matmul`` runs in the BLAS (MKL in the CPU wheel) and a 3×3 convolution
of 256 channels in channels_last runs in oneDNN; both are matrix multiplies. Which is faster
depends on the CPU: on AMD EPYC machines MKL's sgemm can take a code path that uses half the
vector width, so the sgemm alone can understate the peak by 2× (seen here: sgemm 225 GFLOP/s,
the convolution 460-590 on the same two cores). The best of the two is the reference.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch


def timings(run: Callable[[], object], warmup: int, repeats: int) -> list[float]:
    """Wall-clock seconds of ``repeats`` calls of ``run()`` after ``warmup`` calls."""
    for _ in range(warmup):
        run()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - start)
    return seconds


def peak_kernels() -> dict[str, tuple[Callable[[], object], float]]:
    """The reference kernels, each as (a call that runs it once without autograd, its FLOPs):
    a 2048² sgemm and a 3×3 convolution (512 images of 256×8×8, channels_last)."""
    size = 2048
    a, b = torch.randn(size, size), torch.randn(size, size)
    batch, channels, side = 512, 256, 8
    images = torch.randn(batch, channels, side, side).contiguous(
        memory_format=torch.channels_last)
    conv = torch.nn.Conv2d(channels, channels, 3, padding=1, bias=False).to(
        memory_format=torch.channels_last)

    @torch.no_grad()
    def convolution() -> torch.Tensor:
        return conv(images)

    return {"sgemm": (lambda: a @ b, 2 * size**3),
            "convolution": (convolution, 2 * batch * side * side * channels * channels * 9)}


def peak_flops(repeats: int = 7) -> dict[str, float]:
    """The best FLOP/s of each reference kernel over ``repeats`` runs (after two warm-up runs),
    and their maximum under ``"peak"``."""
    rates = {name: flops / min(timings(run, 2, repeats))
             for name, (run, flops) in peak_kernels().items()}
    return rates | {"peak": max(rates.values())}
