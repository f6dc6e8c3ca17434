"""Time the augmentation ops and the SimCLR view recipe on CPU (or another device).

    python bench/augment_speed.py [--batch 512] [--threads 2] [--runs 30] [--device cpu]

Each op runs on a float batch of ``--batch`` images (1x28x28 as Fashion-MNIST and 3x32x32 as
CIFAR); the recipe takes ``--batch`` uint8 images and makes two views (2 x batch images).
Reported: median and fastest of ``--runs`` timed runs after warm-up, in milliseconds. The
budget: two views of 512 images well under ~100 ms, i.e. < 15 % of a SimCLR step.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch

from fewlabels.augment import (
    EvalTransform,
    SimCLRViews,
    color_jitter,
    gaussian_blur,
    horizontal_flip,
    normalize,
    random_grayscale,
    random_resized_crop,
    solarize,
    to_float,
)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(
    fn: Callable[[], object], device: torch.device, runs: int
) -> tuple[float, float, float]:
    """Median and fastest wall time, and median process CPU time, of ``fn`` in ms.

    After three warm-up calls. On a shared machine the CPU time is the steadier measure of
    the work done (with several threads it also counts their spinning).
    """
    for _ in range(3):
        fn()
    _sync(device)
    wall, cpu = [], []
    for _ in range(runs):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        _sync(device)
        wall.append((time.perf_counter() - start) * 1e3)
        cpu.append((time.process_time() - start_cpu) * 1e3)
    return statistics.median(wall), min(wall), statistics.median(cpu)


def cases(
    images_uint8: torch.Tensor, generator: torch.Generator
) -> dict[str, Callable[[], object]]:
    channels, size = images_uint8.shape[1], images_uint8.shape[-1]
    x = to_float(images_uint8)
    mean, std = [0.5] * channels, [0.25] * channels
    views = SimCLRViews(size, mean, std)
    views_all = SimCLRViews(size, mean, std, blur_p=0.5, solarize_p=0.2)
    evaluate = EvalTransform(size, mean, std)
    g = generator
    return {
        "to_float": lambda: to_float(images_uint8),
        "normalize": lambda: normalize(x, mean, std),
        "random_resized_crop": lambda: random_resized_crop(x, size, generator=g),
        "random_resized_crop+flip": lambda: random_resized_crop(x, size, flip_p=0.5, generator=g),
        "horizontal_flip": lambda: horizontal_flip(x, generator=g),
        "color_jitter (s=0.5)": lambda: color_jitter(x, 0.4, 0.4, 0.4, 0.1, generator=g),
        "random_grayscale": lambda: random_grayscale(x, generator=g),
        "gaussian_blur (p=0.5)": lambda: gaussian_blur(x, generator=g),
        "solarize (p=0.2)": lambda: solarize(x, generator=g),
        "EvalTransform": lambda: evaluate(images_uint8),
        "SimCLRViews (2 views)": lambda: views(images_uint8, g),
        "SimCLRViews +blur+solarize": lambda: views_all(images_uint8, g),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    generator = torch.Generator(device=device).manual_seed(0)

    shapes = [(1, 28), (3, 32)]
    results: dict[str, list[tuple[float, float, float]]] = {}
    for channels, size in shapes:
        images = torch.randint(0, 256, (args.batch, channels, size, size), generator=generator,
                               device=device, dtype=torch.uint8)
        for name, fn in cases(images, generator).items():
            results.setdefault(name, []).append(time_ms(fn, device, args.runs))

    print(f"# torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, threads={torch.get_num_threads()}, device={device}, "
          f"batch={args.batch}, load average {os.getloadavg()[0]:.2f}")
    header = " | ".join(f"{c}x{s}x{s} wall median (min) / cpu" for c, s in shapes)
    print(f"| op, ms | {header} |")
    print("|---|" + "---|" * len(shapes))
    for name, timings in results.items():
        cells = " | ".join(f"{median:.2f} ({fastest:.2f}) / {cpu:.2f}"
                           for median, fastest, cpu in timings)
        print(f"| {name} | {cells} |")


if __name__ == "__main__":
    main()
