"""Training throughput of the convolutional backbones on the CPU, against the machine's peak.

For each backbone configuration: one training step (forward, backward, SGD step) on a batch of
512 images of 1×28×28 in channels_last, with a linear classifier and cross-entropy on top. The
FLOPs of a step are counted with ``torch.utils.flop_counter.FlopCounterMode`` (convolutions and
matrix products, forward and backward). The peak is the better of a 2048×2048 fp32 sgemm and
a oneDNN 3×3 convolution (peak.py; on some CPUs the sgemm alone reaches half the convolution's
rate, see machine B in docs/benchmarks.md). The ConvNet rows other than the default are
without the feature layer.

The CPU may be shared with other processes, so the configurations are timed round-robin for
``--rounds`` rounds (each round: for every configuration, 3 runs of each peak kernel, then
``--repeats`` steps after ``--warmup`` steps). Every row reports the median over all its steps
and the best step; "% of peak" divides the median rate by the median of the peaks measured next
to that row, "best %" the best rate by the best peak of the run. On an idle machine median and
best agree.

    python bench/backbone_speed.py                       # the default table (several minutes)
    python bench/backbone_speed.py --only convnet        # configurations whose label starts so
"""

from __future__ import annotations

import argparse
import platform
import statistics
from collections.abc import Callable

import torch
import torch.nn.functional as F
from peak import peak_kernels, timings
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from fewlabels.models import build_backbone

# (label, backbone name, width, depth, options, channels_last)
CONFIGS: list[tuple[str, str, int | None, int | None, dict, bool]] = [
    ("convnet w16 d3 no stem", "convnet", 16, 3, {"space_to_depth": 1, "feature_dim": 0}, True),
    ("convnet w32 d3 no stem", "convnet", 32, 3, {"space_to_depth": 1, "feature_dim": 0}, True),
    ("convnet w32 d3", "convnet", 32, 3, {"feature_dim": 0}, True),
    ("convnet w32 d3 features 512 (default)", "convnet", 32, 3, {}, True),
    ("convnet w48 d3", "convnet", 48, 3, {"feature_dim": 0}, True),
    ("convnet w64 d3", "convnet", 64, 3, {"feature_dim": 0}, True),
    ("convnet w64 d3 contiguous", "convnet", 64, 3, {"feature_dim": 0}, False),
    ("convnet w64 d2", "convnet", 64, 2, {"feature_dim": 0}, True),
    ("convnet w64 d4", "convnet", 64, 4, {"feature_dim": 0}, True),
    ("convnet w96 d3", "convnet", 96, 3, {"feature_dim": 0}, True),
    ("resnet w16 d3 (ResNet-20)", "resnet", 16, 3, {}, True),
    ("resnet w32 d1 space_to_depth 2", "resnet", 32, 1, {"space_to_depth": 2}, True),
    ("resnet w64 d1 space_to_depth 2", "resnet", 64, 1, {"space_to_depth": 2}, True),
    ("wide-resnet 28-2", "wide-resnet", None, None, {}, True),
    ("resnet18", "resnet18", None, None, {}, True),
]


def training_step(
    name: str,
    width: int | None,
    depth: int | None,
    options: dict,
    channels_last: bool,
    batch_size: int,
) -> tuple[Callable[[], None], int, int]:
    """A closure running one training step, its FLOPs, and the backbone's feature_dim."""
    torch.manual_seed(0)
    backbone = build_backbone(
        name, in_channels=1, image_size=28, width=width, depth=depth, **options
    )
    model = nn.Sequential(backbone, nn.Linear(backbone.feature_dim, 10))
    images = torch.randn(batch_size, 1, 28, 28)  # [N, 1, 28, 28]
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (batch_size,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(images), labels).backward()
        optimizer.step()

    with FlopCounterMode(display=False) as counter:
        step()
    return step, counter.get_total_flops(), backbone.feature_dim


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--only", default="", help="run configurations whose label starts so")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    configs = [c for c in CONFIGS if c[0].startswith(args.only)]

    kernels = peak_kernels().values()
    built = {c[0]: training_step(*c[1:], batch_size=args.batch_size) for c in configs}
    peak_rates: dict[str, list[float]] = {label: [] for label in built}  # GFLOP/s
    step_times: dict[str, list[float]] = {label: [] for label in built}
    for _ in range(args.rounds):
        for label, (step, _, _) in built.items():
            # The peak under the same load: the faster kernel at each of 3 runs.
            per_kernel = [[flops / t / 1e9 for t in timings(run, 1, 3)] for run, flops in kernels]
            peak_rates[label] += [max(rates) for rates in zip(*per_kernel, strict=True)]
            step_times[label] += timings(step, args.warmup, args.repeats)
    all_peaks = [rate for rates in peak_rates.values() for rate in rates]
    peak_median, peak_best = statistics.median(all_peaks), max(all_peaks)

    print(
        f"# torch {torch.__version__}, {platform.machine()}, {args.threads} threads, "
        f"batch {args.batch_size} x 1x28x28, fwd+bwd+SGD step, "
        f"{args.rounds} rounds x {args.repeats} steps"
    )
    print(f"# fp32 peak (best of sgemm and 3x3 convolution): median {peak_median:.0f} GFLOP/s, "
          f"best {peak_best:.0f}\n")
    print(
        "| backbone | features | GFLOP/img | img/s | GFLOP/s | % of peak "
        "| best img/s | best GFLOP/s | best % of peak |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for label, (_, flops, feature_dim) in built.items():
        median, best = statistics.median(step_times[label]), min(step_times[label])
        rate, best_rate = flops / median / 1e9, flops / best / 1e9
        near_peak = statistics.median(peak_rates[label])
        share, best_share = 100 * rate / near_peak, 100 * best_rate / peak_best
        print(
            f"| {label} | {feature_dim} | {flops / args.batch_size / 1e9:.3f} "
            f"| {args.batch_size / median:.0f} | {rate:.0f} | {share:.0f}% "
            f"| {args.batch_size / best:.0f} | {best_rate:.0f} | {best_share:.0f}% |"
        )


if __name__ == "__main__":
    main()
