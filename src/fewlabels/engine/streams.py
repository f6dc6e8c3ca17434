"""The batches of a step: an unlabeled stream, a labeled stream, or both side by side.

A self-supervised run has one stream, the training images. A classifier run (supervised,
fine-tuning, semi-supervised) pairs a labeled stream of ``B`` images a step with an
unlabeled stream of ``μ·B`` (USB's ``x_lb, y_lb, x_ulb``; FixMatch's μ = 7). The unlabeled
stream sets the epoch: every training image once per epoch, whatever the class balance. The
labeled stream cycles through seeded permutations of the labeled images at its own pace, so
40 labeled images fill batches of 64. With μ = 0 (supervised training, fine-tuning) an epoch
is one pass over the labeled images. Both streams are stateless (see
:mod:`fewlabels.engine.sampling`): resuming needs nothing saved.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fewlabels.engine.sampling import CyclingSampler, StreamSampler
from fewlabels.errors import UserError
from fewlabels.methods.base import Batch


@dataclass
class LabeledStream:
    """The labeled images of a classifier run and how many unlabeled images go with each.

    ``hidden_labels`` are the true labels of the training images of the unlabeled stream when
    the data has them: methods may only log with them (pseudo-label accuracy), never train.
    """

    images: torch.Tensor  # uint8 [L, C, H, W]
    labels: torch.Tensor  # int64 [L]
    unlabeled_ratio: int = 0  # μ: unlabeled images per labeled image in a batch
    hidden_labels: torch.Tensor | None = None  # int64 [N], aligned with the unlabeled images

    def __post_init__(self) -> None:
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} labeled images but {len(self.labels)} labels")
        if self.unlabeled_ratio < 0:
            raise UserError(f"the unlabeled ratio must be at least 0, got {self.unlabeled_ratio}")


class BatchStreams:
    """Step -> this device's :class:`Batch`, from the training images (the unlabeled stream)
    and, for classifier runs, a :class:`LabeledStream`. ``batch_size`` is the global batch of
    the labeled stream when there is one, else of the unlabeled stream."""

    def __init__(self, images: torch.Tensor, labeled: LabeledStream | None, batch_size: int,
                 seed: int, device: torch.device) -> None:
        self.images = images.to(device)
        self.labeled_images = self.labels = self.hidden_labels = None
        self.labeled_sampler: CyclingSampler | None = None
        self.unlabeled_sampler: StreamSampler | None = None
        if labeled is None:
            self.unlabeled_sampler = StreamSampler(len(images), batch_size, seed)
            self.steps_per_epoch = self.unlabeled_sampler.steps_per_epoch
            return
        self.labeled_images = labeled.images.to(device)
        self.labels = labeled.labels.to(device)
        self.labeled_sampler = CyclingSampler(len(labeled.images), batch_size, seed)
        if labeled.unlabeled_ratio == 0:
            self.steps_per_epoch = math.ceil(len(labeled.images) / batch_size)
            return
        self.unlabeled_sampler = StreamSampler(len(images), labeled.unlabeled_ratio * batch_size,
                                               seed)
        self.steps_per_epoch = self.unlabeled_sampler.steps_per_epoch
        if labeled.hidden_labels is not None:
            if len(labeled.hidden_labels) != len(images):
                raise ValueError("hidden_labels must align with the unlabeled images")
            self.hidden_labels = labeled.hidden_labels.to(device)

    def batch(self, step: int, rank: int, world: int) -> tuple[Batch, int]:
        """This device's batch of global step ``step`` and its number of images."""
        batch, count = Batch(unlabeled=None), 0
        if self.unlabeled_sampler is not None:
            indices = self.unlabeled_sampler.indices(step, rank, world).to(self.images.device)
            batch.unlabeled, batch.indices = self.images[indices], indices
            if self.hidden_labels is not None:
                batch.hidden_labels = self.hidden_labels[indices]
            count += len(indices)
        if self.labeled_sampler is not None:
            indices = self.labeled_sampler.indices(step, rank, world).to(self.images.device)
            batch.labeled, batch.labels = self.labeled_images[indices], self.labels[indices]
            batch.labeled_indices = indices
            count += len(indices)
        return batch, count
