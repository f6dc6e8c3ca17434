"""Is SimCLR pretraining compute-bound? Times the default Fashion-MNIST recipe's steps.

Reports, measured in one run on this machine:
- images per second of whole training steps (views + forward + backward + optimiser);
- the share of the step spent making the two augmented views;
- FLOP/s achieved by the step (FLOPs counted by torch's FlopCounterMode) as a fraction of the
  machine's peak fp32 matrix-multiply FLOP/s, the best of a 2048x2048 sgemm and a 3x3
  convolution measured in the same run (see peak.py).

    .venv/bin/python bench/simclr_step.py [--steps 20] [--batch-size 512] [--data fashion-mnist]
        [--view-size 28] [--feature-dim 0]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from peak import peak_flops
from torch.utils.flop_counter import FlopCounterMode

from fewlabels.commands.pretrain import pretraining_images
from fewlabels.engine.optim import build_optimizer
from fewlabels.methods import Batch, StepInfo
from fewlabels.methods.simclr import SimCLR
from fewlabels.runs import backbone_spec, build_method, data_info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=SimCLR.recipe.batch_size)
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--backbone", default="convnet")
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--depth", type=int, default=None)
    parser.add_argument("--view-size", type=int, default=0,
                        help="side of the views (default 0: SimCLR's default, 3/4 of the image)")
    parser.add_argument("--feature-dim", type=int, default=None,
                        help="ConvNet feature layer channels (default: the backbone's, 512)")
    parser.add_argument("--json", default=None, help="append the result to this JSON-lines file")
    args = parser.parse_args()

    images = pretraining_images(args.data, None, "skip", None, 0)
    info = data_info(images)
    spec = {"method": "simclr", "method_config": {"view_size": args.view_size},
            "backbone": backbone_spec(args.backbone, args.width, args.depth,
                                      feature_dim=args.feature_dim),
            "data": {"spec": args.data, "info": {**info.__dict__, "mean": list(info.mean),
                                                 "std": list(info.std)}}}
    torch.manual_seed(0)
    method = build_method(spec).to(memory_format=torch.channels_last)
    recipe = SimCLR.recipe
    optimizer = build_optimizer("lars", method, recipe.learning_rate * args.batch_size / 256,
                                recipe.weight_decay)
    generator = torch.Generator()

    def views(step: int) -> torch.Tensor:
        generator.manual_seed(step)
        batch = Batch(unlabeled=images.images[torch.randint(len(images), (args.batch_size,))])
        with torch.no_grad():
            out = method.make_views(batch, generator)
        return out.contiguous(memory_format=torch.channels_last)

    def learn(inputs: torch.Tensor, step: int) -> None:
        loss = method(inputs, StepInfo(step, 0, args.steps, generator))["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    with FlopCounterMode(display=False) as counter:
        learn(views(0), 0)
    flops_per_step = counter.get_total_flops()
    for step in range(3):  # warm-up
        learn(views(step), step)

    augment_times, step_times = [], []
    for step in range(args.steps):
        start = time.perf_counter()
        inputs = views(step)
        middle = time.perf_counter()
        learn(inputs, step)
        end = time.perf_counter()
        augment_times.append(middle - start)
        step_times.append(end - start)
    peaks = peak_flops()
    peak = peaks["peak"]
    step_time = statistics.median(step_times)
    result = {
        "machine": f"{platform.processor() or platform.machine()}, "
                   f"{torch.get_num_threads()} threads, torch {torch.__version__}",
        "data": args.data, "backbone": args.backbone, "width": args.width, "depth": args.depth,
        "feature_dim": method.backbone.feature_dim,
        "batch_size": args.batch_size, "view_size": method.views.image_size,
        "backbone_parameters": sum(p.numel() for p in method.backbone.parameters()),
        "images_per_second": args.batch_size / step_time,
        "step_seconds_median": step_time,
        "augment_seconds_median": statistics.median(augment_times),
        "augment_fraction": sum(augment_times) / sum(step_times),
        "gflop_per_step": flops_per_step / 1e9,
        "achieved_gflops": flops_per_step / step_time / 1e9,
        "peak_matmul_gflops": peak / 1e9,
        "sgemm_gflops": peaks["sgemm"] / 1e9,
        "convolution_gflops": peaks["convolution"] / 1e9,
        "fraction_of_peak": flops_per_step / step_time / peak,
    }
    print(json.dumps(result, indent=2))
    if args.json:
        with Path(args.json).open("a") as file:
            file.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
