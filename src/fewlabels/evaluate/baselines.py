"""Baselines that every representation is compared with.

- raw pixels: the normalised pixels, flattened, as features;
- random initialisation: the same backbone architecture, freshly initialised from a seed and
  never trained (features of an untrained network are a surprisingly strong baseline for kNN
  and linear probes);
- supervised from scratch: the backbone plus a linear classifier trained with cross-entropy
  on the labeled subset only — the number a label-efficient method has to beat.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fewlabels.augment.convert import normalize, to_float
from fewlabels.augment.geometric import translate_and_flip
from fewlabels.data.imageset import ImageSet
from fewlabels.engine.optim import build_optimizer
from fewlabels.threads import single_thread_if_small

BackboneFactory = Callable[[], nn.Module]
# Batches of fewer pixel values than this train on one thread (see single_thread_if_small):
# 1 and 10 labels per class of 28 px images, 1 per class of 32 px RGB images.
_SINGLE_THREAD_BELOW = 1 << 17


@torch.no_grad()
def raw_pixel_features(
    images_uint8: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    batch_size: int = 4096,
) -> torch.Tensor:
    """Normalised pixels, flattened: float32 ``[N, C*H*W]``."""
    parts = [
        normalize(to_float(images_uint8[start : start + batch_size]), mean, std, inplace=True)
        .flatten(1)
        for start in range(0, len(images_uint8), batch_size)
    ]
    return torch.cat(parts) if parts else torch.zeros(0, math.prod(images_uint8.shape[1:]))


class RawPixels:
    """A :class:`~fewlabels.evaluate.features.FeatureProvider` of raw-pixel features."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean, self.std = list(mean), list(std)

    def __call__(self, images: ImageSet, part: str) -> torch.Tensor:
        return raw_pixel_features(images.images, self.mean, self.std)


def random_init_backbone(backbone_factory: BackboneFactory, seed: int) -> nn.Module:
    """``backbone_factory()`` with its parameters drawn from ``seed``; the global random state
    is left untouched. Use with :class:`~fewlabels.evaluate.features.BackboneFeatures`."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return backbone_factory()


def supervised_steps(
    num_labeled: int, batch_size: int, *, epochs: int = 30, min_steps: int = 200,
    max_steps: int = 2000,
) -> int:
    """Default length of supervised training: ``epochs`` over the labeled set, clamped to
    ``[min_steps, max_steps]``. 10 labeled images get 200 steps (augmented, so they are not
    merely memorised for ever); 60,000 get 2,000 steps of 128 (4.3 epochs): measured on a
    shared 2-core CPU, 0.1-0.15 s a step for a width-16 ConvNet on 28 px images, 0.5 s for
    the default width 64."""
    steps_per_epoch = math.ceil(num_labeled / max(1, min(batch_size, num_labeled)))
    return min(max(epochs * steps_per_epoch, min_steps), max_steps)


class SupervisedModel(nn.Module):
    """A backbone with a linear classifier; ``settings`` records how it was trained."""

    def __init__(
        self, backbone: nn.Module, num_classes: int, mean: Sequence[float], std: Sequence[float]
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.classifier = nn.Linear(int(backbone.feature_dim), num_classes)
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32))
        self.settings: dict[str, Any] = {}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits ``[N, classes]`` for normalised float images."""
        return self.classifier(self.backbone(images))

    @torch.no_grad()
    def predict(self, images_uint8: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
        """Predicted labels (int64, CPU) for uint8 images, in eval mode."""
        was_training = self.training
        self.eval()
        device = self.mean.device
        try:
            predictions = [
                self(
                    normalize(to_float(images_uint8[start : start + batch_size].to(device)),
                              self.mean, self.std, inplace=True)
                    .contiguous(memory_format=torch.channels_last)
                ).argmax(1).cpu()
                for start in range(0, len(images_uint8), batch_size)
            ]
        finally:
            self.train(was_training)
        return torch.cat(predictions) if predictions else torch.zeros(0, dtype=torch.long)

    def accuracy(self, images: ImageSet) -> float:
        """Fraction of ``images`` whose predicted label is right."""
        if images.labels is None:
            raise ValueError("accuracy needs labeled images")
        return (self.predict(images.images) == images.labels).float().mean().item()


def learning_rates(peak: float, steps: int, warmup_steps: int) -> torch.Tensor:
    """Per-step learning rates: linear warm-up to ``peak``, then a cosine decay to 0."""
    step = torch.arange(steps, dtype=torch.float64)
    warmup = peak * (step + 1) / max(1, warmup_steps)
    progress = (step - warmup_steps) / max(1, steps - warmup_steps)
    cosine = peak * 0.5 * (1 + torch.cos(math.pi * progress.clamp(0, 1)))
    return torch.where(step < warmup_steps, warmup, cosine)


def train_supervised(
    backbone_factory: BackboneFactory,
    labeled: ImageSet,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    num_classes: int | None = None,
    steps: int | None = None,
    batch_size: int = 128,
    lr: float = 2e-3,
    weight_decay: float = 0.05,
    warmup_fraction: float = 0.05,
    max_shift: int | None = None,
    flip: bool = True,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> SupervisedModel:
    """Train ``backbone_factory()`` plus a linear classifier from scratch on ``labeled`` only.

    AdamW (decoupled weight decay on matrices and convolution kernels only, as in nanoGPT) with
    a linear warm-up over ``warmup_fraction`` of the steps and a cosine decay; cross-entropy;
    light augmentation by :func:`translate_and_flip` (``max_shift`` defaults to 1/16 of the
    image side, at least 2 px). Batches of ``min(batch_size, N)`` images are taken by indexing
    seeded permutations of the in-memory uint8 tensor. ``steps=None`` uses
    :func:`supervised_steps`. The returned model's ``settings`` records all of this.
    """
    if labeled.labels is None or len(labeled) == 0:
        raise ValueError("train_supervised needs labeled images")
    device = torch.device(device)
    num_classes = num_classes or max(labeled.num_classes, int(labeled.labels.max()) + 1)
    batch_size = min(batch_size, len(labeled))
    steps = steps if steps is not None else supervised_steps(len(labeled), batch_size)
    warmup_steps = round(warmup_fraction * steps)
    if max_shift is None:
        max_shift = max(2, round(min(labeled.image_size) / 16))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SupervisedModel(backbone_factory(), num_classes, mean, std)
    model = model.to(device, memory_format=torch.channels_last)
    model.settings = {
        "optimizer": "AdamW", "steps": steps, "batch_size": batch_size,
        "epochs": round(steps * batch_size / len(labeled), 2), "lr": lr,
        "weight_decay": weight_decay, "warmup_steps": warmup_steps, "schedule": "cosine",
        "max_shift": max_shift, "flip": flip, "seed": seed, "labeled": len(labeled),
    }
    optimizer = build_optimizer("adamw", model, lr, weight_decay)
    schedule = learning_rates(lr, steps, warmup_steps).tolist()
    generator = torch.Generator().manual_seed(seed)
    images, labels = labeled.images.to(device), labeled.labels.to(device)
    permutations_needed = math.ceil(steps * batch_size / len(labeled))
    order = torch.cat(
        [torch.randperm(len(labeled), generator=generator) for _ in range(permutations_needed)]
    ).to(device)
    model.train()
    with single_thread_if_small(batch_size * labeled.images[0].numel(), _SINGLE_THREAD_BELOW):
        _train_steps(model, optimizer, schedule, images, labels, order, batch_size,
                     max_shift=max_shift, flip=flip, generator=generator)
    model.eval()
    return model


def _train_steps(
    model: SupervisedModel,
    optimizer: torch.optim.Optimizer,
    schedule: list[float],
    images: torch.Tensor,
    labels: torch.Tensor,
    order: torch.Tensor,
    batch_size: int,
    *,
    max_shift: int,
    flip: bool,
    generator: torch.Generator,
) -> None:
    for step in range(len(schedule)):
        for group in optimizer.param_groups:
            group["lr"] = schedule[step]
        indices = order[step * batch_size : (step + 1) * batch_size]
        batch = images[indices].to(torch.float32).div_(255)
        batch = translate_and_flip(batch, max_shift=max_shift, flip=flip, generator=generator)
        batch = ((batch - model.mean.view(1, -1, 1, 1)) / model.std.view(1, -1, 1, 1))
        logits = model(batch.contiguous(memory_format=torch.channels_last))
        loss = F.cross_entropy(logits, labels[indices])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def supervised_baseline(
    backbone_factory: BackboneFactory,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    **options: Any,
) -> Callable[[ImageSet, int], SupervisedModel]:
    """The supervised-from-scratch baseline as ``train(labeled, seed) -> SupervisedModel``, the
    form :func:`~fewlabels.evaluate.label_efficiency.evaluate_label_efficiency` takes; ``options``
    are passed to :func:`train_supervised`."""

    def train(labeled: ImageSet, seed: int) -> SupervisedModel:
        return train_supervised(backbone_factory, labeled, mean=mean, std=std, seed=seed, **options)

    return train
