"""Is pretraining compute-bound? Times a method's default Fashion-MNIST recipe's steps.

Reports, measured in one run on this machine:
- images per second of whole training steps (views + forward + backward + optimiser);
- the share of the step spent making the augmented views;
- FLOP/s achieved by the step (FLOPs counted by torch's FlopCounterMode) as a fraction of the
  machine's peak fp32 matrix-multiply FLOP/s, the best of a 2048x2048 sgemm and a 3x3
  convolution measured in the same run (see peak.py).

    .venv/bin/python bench/method_step.py [--method simclr] [--steps 20] [--batch-size 512]
        [--data fashion-mnist] [--feature-dim 0] [--option view_size=28 ...]

A step is what the engine does: views, forward, backward, the method's hook, the optimiser
step with the recipe's optimiser and parameter groups, the method's teacher update.
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
from fewlabels.engine.optim import build_optimizer, parameter_groups
from fewlabels.engine.schedule import TrainingClock
from fewlabels.methods import METHODS, Batch, StepInfo
from fewlabels.options import field_types, parse_text
from fewlabels.runs import backbone_spec, build_method, data_info, method_config


def _method_options(method: str, pairs: list[str]) -> dict:
    """``["view_size=28", "local_views=2"]`` parsed with the types of the method's config."""
    kinds = field_types(METHODS.get(method).Config)
    options = {}
    for pair in pairs:
        key, _, text = pair.partition("=")
        options[key] = parse_text(kinds[key], text)
    return options


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="simclr")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=None,
                        help="default: the method's recipe")
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--backbone", default="convnet")
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--depth", type=int, default=None)
    parser.add_argument("--option", action="append", default=[],
                        help="a method option as field=value (repeatable)")
    parser.add_argument("--feature-dim", type=int, default=None,
                        help="ConvNet feature layer channels (default: the backbone's, 512)")
    parser.add_argument("--json", default=None, help="append the result to this JSON-lines file")
    args = parser.parse_args()

    images = pretraining_images(args.data, None, "skip", None, 0)
    info = data_info(images)
    recipe = METHODS.get(args.method).recipe
    args.batch_size = args.batch_size or recipe.batch_size
    spec = {"method": args.method,
            "method_config": method_config(args.method, _method_options(args.method,
                                                                        args.option)),
            "backbone": backbone_spec(args.backbone, args.width, args.depth,
                                      feature_dim=args.feature_dim),
            "data": {"spec": args.data, "info": {**info.__dict__, "mean": list(info.mean),
                                                 "std": list(info.std)}}}
    torch.manual_seed(0)
    method = build_method(spec).to(memory_format=torch.channels_last)
    groups = parameter_groups(method, recipe.weight_decay, method.parameter_options)
    optimizer = build_optimizer(recipe.optimizer, groups,
                                recipe.learning_rate * args.batch_size / 256,
                                momentum=recipe.momentum, betas=recipe.adamw_betas,
                                nesterov=recipe.nesterov)
    generator = torch.Generator()
    steps_per_epoch = len(images) // args.batch_size
    clock = TrainingClock(steps_per_epoch, total_steps=100 * steps_per_epoch)
    schedules = {"learning_rate": recipe.learning_rate_schedule(), **method.schedules()}

    def channels_last(inputs):  # noqa: ANN001, ANN202
        if isinstance(inputs, torch.Tensor) and inputs.ndim == 4:
            return inputs.contiguous(memory_format=torch.channels_last)
        if isinstance(inputs, list | tuple):
            return type(inputs)(channels_last(x) for x in inputs)
        return inputs

    def views(step: int):  # noqa: ANN202
        generator.manual_seed(step)
        indices = torch.randint(len(images), (args.batch_size,))
        batch = Batch(unlabeled=images.images[indices], indices=indices)
        with torch.no_grad():
            out = method.make_views(batch, generator)
        return channels_last(out)

    def learn(inputs, step: int) -> None:  # noqa: ANN001
        clock.advance(step + steps_per_epoch, 0.0)  # past the first epoch's frozen layers
        values = {name: clock.value(schedule) for name, schedule in schedules.items()}
        info = StepInfo(clock.step, 1, clock.progress, generator, steps_per_epoch, values)
        loss = method(inputs, info)["loss"]
        loss.backward()
        method.before_optimizer_step(info)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        method.after_optimizer_step(info)

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
        "method": args.method, "options": args.option,
        "data": args.data, "backbone": args.backbone, "width": args.width, "depth": args.depth,
        "feature_dim": method.backbone.feature_dim, "batch_size": args.batch_size,
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
