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


def _best_rate(run: Callable[[], object], flops: float, repeats: int) -> float:
    for _ in range(2):  # warm-up: allocation and kernel choice
        run()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return flops / best


@torch.no_grad()
def peak_flops(repeats: int = 7) -> dict[str, float]:
    """FLOP/s of a 2048² sgemm, of a 3×3 convolution (512 images of 256×8×8, channels_last)
    and their maximum under ``"peak"``."""
    size = 2048
    a, b = torch.randn(size, size), torch.randn(size, size)
    sgemm = _best_rate(lambda: a @ b, 2 * size**3, repeats)
    batch, channels, side = 512, 256, 8
    images = torch.randn(batch, channels, side, side).contiguous(
        memory_format=torch.channels_last)
    conv = torch.nn.Conv2d(channels, channels, 3, padding=1, bias=False).to(
        memory_format=torch.channels_last)
    conv_flops = 2 * batch * side * side * channels * channels * 9
    convolution = _best_rate(lambda: conv(images), conv_flops, repeats)
    return {"sgemm": sgemm, "convolution": convolution, "peak": max(sgemm, convolution)}
