"""Run the real training engine on one process or on several (gloo, CPU) on the same global
batches, so a test can prove that a method's gathers, all-reduces, queues, centres and memory
banks make a multi-process run compute what one process computes.

The only difference from a real run: every device augments the whole global batch with the
generator of (seed, step) and keeps its own slice of the views, so that the views themselves
agree between one process and many (a real run draws each device's views from its own
generator, which is equally valid but not comparable number for number).

Classifier methods (``labeled=L``): the first L images, with labels ``index % classes``, are
the labeled stream, all 64 the unlabeled one (their labels are its hidden labels). A view
tensor belongs to the unlabeled stream when its length is a multiple of the global unlabeled
batch, else to the labeled stream (so a labeled tensor holds one view per image unless both
batches are equal).
"""

from __future__ import annotations

import gc
import os
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp

from fewlabels.engine.sampling import step_seed
from fewlabels.engine.streams import LabeledStream
from fewlabels.engine.trainer import TrainConfig, Trainer
from fewlabels.runs import backbone_spec, build_method, data_info, method_class, method_config
from gloo_processes import free_port

NUM_IMAGES = 64


def _images(channels: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(5)
    # smooth random images (a little structure for the convolutions)
    small = torch.rand(NUM_IMAGES, channels, 7, 7, generator=generator)
    images = torch.nn.functional.interpolate(small, size=28, mode="bilinear")
    return (images * 255).to(torch.uint8)


def _slice_views(inputs: Any, global_batch: int | tuple[int, ...], rank: int,
                 world: int) -> Any:
    """This rank's part of view-major inputs made for the whole global batch (or batches, one
    per stream: a tensor is sliced by the first whose size divides its length)."""
    if isinstance(inputs, torch.Tensor):
        sizes = global_batch if isinstance(global_batch, tuple) else (global_batch,)
        global_batch = next((size for size in sizes if inputs.shape[0] % size == 0), sizes[0])
        views = inputs.shape[0] // global_batch
        local = global_batch // world
        shaped = inputs.reshape(views, global_batch, *inputs.shape[1:])
        part = shaped[:, rank * local:(rank + 1) * local]
        return part.reshape(views * local, *inputs.shape[1:]).contiguous()
    if isinstance(inputs, tuple) and hasattr(inputs, "_fields"):  # a NamedTuple of views
        return type(inputs)(*(_slice_views(x, global_batch, rank, world) for x in inputs))
    if isinstance(inputs, list | tuple):
        return type(inputs)(_slice_views(x, global_batch, rank, world) for x in inputs)
    if inputs is None:
        return None
    raise TypeError(f"cannot slice views of type {type(inputs)}")


class _SameViewsTrainer(Trainer):
    """Augments the global batch on every device and keeps this device's slice; records the
    loss of every step."""

    losses: list[float]

    def _make_inputs(self) -> tuple[Any, int]:
        batch, count = self.streams.batch(self.step, 0, 1)
        self.generator.manual_seed(step_seed(self.config.seed, self.step, 0))
        inputs = self.method.make_views(batch, self.generator)
        sizes = count if batch.labeled is None else tuple(
            len(images) for images in (batch.unlabeled, batch.labeled) if images is not None)
        return _slice_views(inputs, sizes, self.rank, self.world), count // self.world

    def _training_step(self):  # noqa: ANN202
        result = super()._training_step()
        self.losses.append(float(result[0]["loss"].detach()))
        return result


def train_steps(method: str, options: dict[str, Any], backbone: dict[str, Any], steps: int,
                batch_size: int, out: Path, world: int = 1, rank: int = 0,
                recipe: dict[str, Any] | None = None, channels: int = 1,
                labeled: int = 0, classes: int = 3) -> dict[str, Any]:
    """Train ``steps`` steps on this process (one of ``world``) on ``channels``-channel
    images; a classifier method with ``labeled`` > 0 labeled images of ``classes`` classes
    beside them. Returns the losses, the final state dict and the method's resolved
    config."""
    from lightning_fabric import Fabric
    from lightning_fabric.strategies import DDPStrategy

    torch.set_num_threads(1)
    images = _images(channels)
    from fewlabels.data.imageset import ImageSet

    labels = torch.arange(NUM_IMAGES) % classes
    info = data_info(ImageSet(images, None, [], "harness"), classes if labeled else 0)
    spec = {"method": method, "method_config": method_config(method, options),
            "backbone": backbone_spec(backbone.pop("name"), backbone.pop("width", None),
                                      backbone.pop("depth", None), **backbone),
            "data": {"spec": "harness", "info": info.__dict__ | {
                "mean": list(info.mean), "std": list(info.std), "num_images": NUM_IMAGES}}}
    if world == 1:
        fabric = Fabric(accelerator="cpu", devices=1, precision="32-true")
        fabric.launch()
    else:  # the worker's environment says the processes exist (LT_CLI_USED): no launch
        fabric = Fabric(accelerator="cpu", devices=world, precision="32-true",
                        strategy=DDPStrategy(broadcast_buffers=False, process_group_backend="gloo"))
    torch.manual_seed(0)
    built = build_method(spec)
    base = method_class(method).recipe
    config = TrainConfig(run_dir=out, recipe=base.replace(batch_size=batch_size, epochs=100,
                                                          **(recipe or {})),
                         progress=False, tensorboard=False, checkpoint_minutes=1e9,
                         stop_after_steps=None)
    stream = None if not labeled else LabeledStream(
        images[:labeled], labels[:labeled], built.unlabeled_ratio, hidden_labels=labels)
    trainer = _SameViewsTrainer(built, images, config, spec, fabric, labeled=stream)
    trainer.losses = []
    trainer.total_steps = steps  # stop after ``steps``; the schedules keep the 100 epochs
    trainer.run()
    state = {k: v.detach().clone() for k, v in trainer.method.state_dict().items()}
    return {"losses": trainer.losses, "state": state, "config": built.config_dict()}


def _worker(rank: int, world: int, port: int, arguments: dict[str, Any], out: str) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                       "LOCAL_RANK": str(rank), "NODE_RANK": "0", "WORLD_SIZE": str(world),
                       "RANK": str(rank), "LT_CLI_USED": "1"})
    import torch.distributed as dist

    try:
        result = train_steps(**arguments, out=Path(out) / f"run{rank}", world=world, rank=rank)
        torch.save(result, Path(out) / f"rank{rank}.pt")
        dist.barrier()
    finally:
        gc.collect()
        if dist.is_initialized():
            dist.destroy_process_group()


def compare_one_and_two_processes(tmp_path: Path, method: str, options: dict[str, Any],
                                  backbone: dict[str, Any], steps: int = 3,
                                  batch_size: int = 16,
                                  recipe: dict[str, Any] | None = None,
                                  atol: float = 1e-5, channels: int = 1,
                                  labeled: int = 0, classes: int = 3) -> dict[str, Any]:
    """Train one process and two on the same global batches of ``channels``-channel images
    (3: colour), for a classifier method with a stream of ``labeled`` images of ``classes``
    classes (0: a self-supervised method); assert equal mean losses and equal final
    parameters and buffers. Returns the single-process result."""
    arguments = {"method": method, "options": options, "steps": steps,
                 "batch_size": batch_size, "recipe": recipe, "channels": channels,
                 "labeled": labeled, "classes": classes}
    single = train_steps(**arguments, backbone=dict(backbone), out=tmp_path / "single")
    mp.spawn(_worker, args=(2, free_port(), {**arguments, "backbone": dict(backbone)},
                            str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    for step, loss in enumerate(single["losses"]):
        mean = (ranks[0]["losses"][step] + ranks[1]["losses"][step]) / 2
        assert abs(mean - loss) < atol * max(1.0, abs(loss)) * 10, (step, mean, loss)
    for name, value in single["state"].items():
        for rank in ranks:
            other = rank["state"][name]
            if value.is_floating_point():
                torch.testing.assert_close(other, value, atol=atol, rtol=1e-4, msg=name)
            else:
                assert torch.equal(other, value), name
    return single
