"""RotNet: recognise by how many quarter turns an image was rotated.

Gidaris, Singh, Komodakis, "Unsupervised Representation Learning by Predicting Image
Rotations", ICLR 2018. Every image of the batch is shown at 0, 90, 180 and 270 degrees
(``torch.rot90`` of the whole batch: exact, no interpolation, so no resampling artefact tells
the angle), and a linear classifier on the backbone's pooled features predicts which of the
four rotations it sees (cross-entropy). The paper found feeding all four rotations of each
image in the same batch better than one random rotation per image, which is what this does:
a step sees ``4 x batch`` views. Rotation label ``r``
means ``torch.rot90(view, r, dims=(2, 3))``; the views are rotation-major (the block of
rotation ``r`` is rows ``r N .. r N + N - 1``).

``pretext_accuracy`` (the fraction of views whose rotation the head gets right) is logged
with the loss: it is what to watch for this method; near 0.25 the backbone learned nothing,
and Fashion-MNIST's nearly symmetric items (bags, some tops) cap it below 1.

Differences from the paper, for 28-32 px images and runs of minutes on a CPU:

- evaluation (kNN, linear probe, clusters) uses the backbone's pooled features, as for
  every method here; the paper's best linear features come from middle layers (its NIN's
  second block: the last layers specialise in the rotation task), so the numbers here
  undersell RotNet against per-layer probes;
- the classifier is one linear layer on the pooled features (the paper's NIN ends in its own
  conv block, global pooling and a linear layer);
- light augmentation, one crop per image shared by its four rotations: a random resized crop
  of 60-100 % of the image (``crop_scale_min``) at 3/4 of the image side (``view_size``,
  20 px for Fashion-MNIST, as the other methods' views) and a horizontal flip; no colour
  jitter (the paper's CIFAR recipe has crops and flips only);
- SGD with momentum 0.9 at 0.1 per 256 images (the paper: 0.1 with batches of 128 images),
  weight decay 5e-4 as the paper, a cosine decay after one warm-up epoch instead of steps.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fewlabels.augment.recipes import SimCLRViews
from fewlabels.methods.base import (
    Batch,
    DataInfo,
    Method,
    StepInfo,
    TrainingRecipe,
    check_options,
    embedding_spread,
    pretext_accuracy,
    resolve_view_size,
)
from fewlabels.methods.registry import METHODS
from fewlabels.options import option

ROTATIONS = 4


def all_rotations(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image of ``images`` ``[N, C, S, S]`` at 0, 90, 180 and 270 degrees: views
    ``[4N, C, S, S]`` (rotation-major: row ``r N + i`` is image ``i`` turned ``r`` times by
    ``torch.rot90(., r, dims=(2, 3))``) and their labels ``[4N]`` (``r``)."""
    if images.shape[-1] != images.shape[-2]:
        raise ValueError(f"rotations need square images, got {tuple(images.shape)}")
    views = torch.cat([torch.rot90(images, turns, dims=(2, 3)) for turns in range(ROTATIONS)])
    return views, rotation_labels(images.shape[0], images.device)


def rotation_labels(count: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The labels of :func:`all_rotations`' views of ``count`` images: int64 ``[4 count]``."""
    return torch.arange(ROTATIONS, device=device).repeat_interleave(count)


@dataclass
class RotationConfig:
    crop_scale_min: float = option(
        0.6, "smallest crop area, as a fraction of the image (one crop per image, shared by "
             "its four rotations)")
    flip_probability: float = option(0.5, "probability of a horizontal flip before rotating")
    view_size: int = option(
        0, "side of the training views in pixels; 0: 3/4 of the image side rounded down to a "
           "multiple of 4 (20 for 28 px images)")


@METHODS.register("rotation", "RotNet: predict the rotation (0/90/180/270 degrees) of every "
                              "image (Gidaris et al. 2018)")
class Rotation(Method):
    """RotNet: the four rotations of each view, a linear 4-way classifier on the pooled
    features."""

    name = "rotation"
    Config = RotationConfig
    paper = "Gidaris, Singh, Komodakis, ICLR 2018"
    collapse_hint = "lower --lr; check that pretext_accuracy rises above 0.25"
    recipe = TrainingRecipe(
        optimizer="sgd", learning_rate=0.1, weight_decay=5e-4, batch_size=256,
        warmup_epochs=1.0, epochs=100,
    )

    def __init__(self, backbone: nn.Module, config: RotationConfig, data: DataInfo) -> None:
        check_options([
            (0.0 < config.crop_scale_min <= 1.0,
             f"--crop-scale-min must be in (0, 1], got {config.crop_scale_min}"),
            (0.0 <= config.flip_probability <= 1.0,
             f"--flip-probability must be in [0, 1], got {config.flip_probability}"),
        ])
        super().__init__(backbone, config, data)
        view_size = resolve_view_size(backbone, data, config.view_size)
        # Stored resolved, so a resumed run keeps its views if the default rule changes.
        self.config = dataclasses.replace(config, view_size=view_size)
        self.views = SimCLRViews(image_size=view_size, mean=data.mean, std=data.std,
                                 crop_scale=(config.crop_scale_min, 1.0), jitter_p=0.0,
                                 grayscale_p=0.0, flip_p=config.flip_probability,
                                 num_views=1)
        self.classifier = nn.Linear(backbone.feature_dim, ROTATIONS)

    def make_views(self, batch: Batch, generator: torch.Generator) -> torch.Tensor:
        views = self.views.all_views(batch.unlabeled, generator)  # [N, C, S, S]
        return all_rotations(views)[0]  # [4N, C, S, S], rotation-major

    def training_loss(self, inputs: torch.Tensor, step: StepInfo) -> dict[str, torch.Tensor]:
        features = self.backbone(inputs)  # [4N, D]: one pass, BN statistics over all 4N
        logits = self.classifier(features)  # [4N, 4]
        labels = rotation_labels(inputs.shape[0] // ROTATIONS, inputs.device)
        return {"loss": F.cross_entropy(logits, labels),
                "pretext_accuracy": pretext_accuracy(logits, labels),
                "embedding_spread": embedding_spread(features[: inputs.shape[0] // ROTATIONS])}
