"""Baselines that every representation is compared with.

- raw pixels: the normalised pixels, flattened, as features;
- random initialisation: the same backbone architecture, freshly initialised from a seed and
  never trained (features of an untrained network are a surprisingly strong baseline for kNN
  and linear probes);
- supervised from scratch: the backbone plus a linear classifier trained with cross-entropy
  on the labeled subset only — the number a label-efficient method has to beat. It is the
  ``supervised`` classifier method on the engine's training loop (the one loop of
  `fewlabels semi` and `fewlabels finetune`), with this baseline's own AdamW recipe.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from fewlabels.augment.convert import normalize, to_float
from fewlabels.data.imageset import ImageSet
from fewlabels.engine.recipe import TrainingRecipe
from fewlabels.methods.base import DataInfo
from fewlabels.semi.classifier_run import predict_probabilities
from fewlabels.semi.training import epochs_for_steps, moving_average_decay, train_classifier

BackboneFactory = Callable[[], nn.Module]


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
    """A trained classifier network (backbone and linear classifier: normalised images ->
    logits) with the normalisation it expects; ``settings`` records how it was trained."""

    def __init__(self, network: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.network = network
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32))
        self.settings: dict[str, Any] = {}

    @property
    def backbone(self) -> nn.Module:
        return self.network.backbone

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits ``[N, classes]`` for normalised float images."""
        return self.network(images)

    @torch.no_grad()
    def predict(self, images_uint8: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
        """Predicted labels (int64, CPU) for uint8 images, in eval mode."""
        if len(images_uint8) == 0:
            return torch.zeros(0, dtype=torch.long)
        return predict_probabilities(self.network, images_uint8, self.mean.tolist(),
                                     self.std.tolist(), batch_size=batch_size,
                                     device=self.mean.device).argmax(1)

    def accuracy(self, images: ImageSet) -> float:
        """Fraction of ``images`` whose predicted label is right."""
        if images.labels is None:
            raise ValueError("accuracy needs labeled images")
        return (self.predict(images.images) == images.labels).float().mean().item()


def baseline_recipe(batch_size: int, lr: float, weight_decay: float, warmup_fraction: float,
                    epochs: int) -> TrainingRecipe:
    """The supervised baseline's recipe as the engine reads it: AdamW at learning rate ``lr``
    for batches of ``batch_size`` (the engine scales a recipe's rate per 256 images), cosine
    decay to 0 after a linear warm-up over ``warmup_fraction`` of the ``epochs``."""
    return TrainingRecipe(optimizer="adamw", learning_rate=lr * 256 / batch_size,
                          weight_decay=weight_decay, batch_size=batch_size,
                          warmup_epochs=warmup_fraction * epochs, lr_decay="cosine",
                          epochs=epochs)


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
    ema_decay: float | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> SupervisedModel:
    """Train ``backbone_factory()`` plus a linear classifier from scratch on ``labeled`` only:
    the ``supervised`` classifier method on the engine's training loop
    (:func:`~fewlabels.semi.training.train_classifier`), the one loop every classifier
    trains with.

    AdamW (weight decay on matrices and convolution kernels only) at ``lr`` for batches of
    ``min(batch_size, N)`` images, a linear warm-up over ``warmup_fraction`` of the run and a
    cosine decay; cross-entropy on images translated by up to ``max_shift`` pixels (default
    1/16 of the image side, at least 2 px) and flipped. ``steps=None`` uses
    :func:`supervised_steps`; the length is rounded to whole passes over the labeled images.
    The returned model is the moving average of the weights, with decay ``ema_decay``
    (default :func:`~fewlabels.semi.training.moving_average_decay` of the run's length; 0:
    the trained weights); its ``settings`` record all of this.
    """
    if labeled.labels is None or len(labeled) == 0:
        raise ValueError("train_supervised needs labeled images")
    num_classes = num_classes or max(labeled.num_classes, int(labeled.labels.max()) + 1)
    batch_size = min(batch_size, len(labeled))
    steps = steps if steps is not None else supervised_steps(len(labeled), batch_size)
    epochs, steps = epochs_for_steps(steps, len(labeled), batch_size)
    side = min(labeled.image_size)
    if max_shift is None:
        max_shift = max(2, round(side / 16))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        backbone = backbone_factory()
    data = DataInfo(labeled.channels, side, tuple(mean), tuple(std), num_classes, len(labeled))
    options = {"ema_decay": moving_average_decay(steps) if ema_decay is None else ema_decay,
               "max_shift": max_shift / side, "flip": flip}
    trained = train_classifier(
        backbone, data, labeled, method="supervised", options=options,
        recipe=baseline_recipe(batch_size, lr, weight_decay, warmup_fraction, epochs),
        seed=seed, device=device)
    model = SupervisedModel(trained.network(), mean, std).to(torch.device(device))
    model.settings = {**trained.settings(), "max_shift": max_shift, "seed": seed,
                      "labeled": len(labeled), "from": "scratch"}
    return model.eval()


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
