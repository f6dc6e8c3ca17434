"""MoCo v2: contrast each query with its key and a queue of keys from past batches.

He, Fan, Wu, Xie, Girshick, "Momentum Contrast for Unsupervised Visual Representation
Learning", CVPR 2020; Chen, Fan, Girshick, He, "Improved Baselines with Momentum Contrastive
Learning", arXiv 2003.04297, 2020. The query encoder is the backbone with a 2-layer MLP head
(Linear-ReLU-Linear, no batch norm, hidden size the backbone's feature size); the key encoder
is its momentum copy, ``θ_k <- m θ_k + (1 - m) θ_q`` after every optimiser step, with no
gradient. As in the official code the key encoder runs in train mode and keeps its own
batch-norm statistics (the EMA touches parameters only). The loss is InfoNCE of each query
against its key and a first-in, first-out queue of ``queue_size`` keys
(:func:`~fewlabels.losses.contrastive.moco_queue_loss`, temperature 0.2). The keys of the
global batch are gathered from all devices and enqueued only after the loss (with the
symmetric loss, after both terms), so no image is ever its own negative; the queue and its
pointer are buffers, so checkpoints hold them.

**Shuffled batch norm on any number of devices.** The paper shuffles the keys' batch across
GPUs so that a query and its key never share batch statistics (Section 3.3); that needs
several GPUs (facebookresearch/moco#47). Here, as in the authors' one-GPU CIFAR-10 demo,
every batch norm of the backbone is a
:class:`~fewlabels.models.split_batch_norm.SplitBatchNorm` that normalises
``batch_norm_splits`` fixed groups of each device's batch separately (as if each group were a
GPU); the key encoder sees the batch in a random order drawn from the step's generator, split
into the same groups, and its keys are put back in order. Statistics stay per device by
design (``sync_batch_norm = False``). With one split there is no shuffling: plain batch norm.

Differences from the paper's ImageNet recipe (200 epochs, 8 GPUs), for 28-32 px images and
runs of minutes on a CPU:

- views of 3/4 of the image side (20 px for Fashion-MNIST; ``view_size``), the same
  augmentation otherwise (crop, colour jitter 0.4/0.4/0.4/0.1 with p 0.8, grayscale 0.2,
  flip) with crops of 40-100 % of the image instead of 20-100 % (SimCLR's measured choice at
  this size) and blur only on views of 64 px or more (SimCLR leaves it out on CIFAR);
- a queue of 4,096 keys instead of 65,536: the demo found CIFAR-10 saturated at 4,096, and
  a short run cannot afford stale keys (4,096 keys are the last 8 batches of 512);
- key momentum 0.99 instead of 0.999: at 0.999 the key encoder averages the last ~1,000
  steps, most of a 10-minute run, so the keys would come from a network far behind the
  queries; at 0.99 it averages ~100 steps, about one epoch of 60,000 images (the demo and
  solo-learn use 0.99 on CIFAR too);
- the optional symmetric loss of the demo (``symmetric``) averages its two terms, so its
  scale, and the learning rate that suits it, are those of the asymmetric loss;
- a 1-epoch warm-up before the cosine decay (the paper has none).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from fewlabels.augment.recipes import SimCLRViews
from fewlabels.engine.schedule import Schedule
from fewlabels.errors import UserError
from fewlabels.losses.contrastive import moco_queue_loss
from fewlabels.methods.base import (
    Batch,
    DataInfo,
    Method,
    StepInfo,
    TrainingRecipe,
    embedding_spread,
    resolve_view_size,
)
from fewlabels.methods.registry import METHODS
from fewlabels.models.heads import ProjectionHead
from fewlabels.models.memory import FeatureQueue
from fewlabels.models.momentum import copy_as_teacher, ema_update_
from fewlabels.models.split_batch_norm import convert_to_split_batch_norm
from fewlabels.options import option

# Views at least this large get MoCo v2's blur (p = 0.5) unless --blur-probability is given.
BLUR_MIN_VIEW_SIZE = 64


@dataclass
class MoCoConfig:
    queue_size: int = option(4096, "keys in the queue, K (the paper: 65536)")
    temperature: float = option(0.2, "InfoNCE temperature tau")
    key_momentum: float = option(
        0.99, "EMA coefficient m of the key encoder (the paper: 0.999 for 200 epochs)")
    symmetric: bool = option(
        False, "also use the second view as query and the first as key, averaging the two "
               "losses (the authors' CIFAR demo)")
    batch_norm_splits: int = option(
        8, "groups of each device's batch normalised separately, the key encoder's batch "
           "shuffled (shuffled BN on one device); 1: plain batch norm")
    projection_dim: int = option(128, "output size of the MLP head")
    projection_hidden_dim: int = option(
        0, "hidden size of the 2-layer MLP head; 0: the backbone's feature size (MoCo v2)")
    view_size: int = option(
        0, "side of the training views in pixels; 0: 3/4 of the image side rounded down to a "
           "multiple of 4 (20 for 28 px images)")
    crop_scale_min: float = option(0.4, "smallest crop area, as a fraction of the image")
    jitter_strength: float = option(
        0.5, "colour jitter strength s: brightness, contrast, saturation 0.8 s, hue 0.2 s")
    grayscale_probability: float = option(0.2, "probability of converting a view to gray")
    blur_probability: float | None = option(
        None, f"probability of Gaussian blur; none: 0.5 on views of {BLUR_MIN_VIEW_SIZE} px "
              "or more (MoCo v2), 0 on smaller ones")


@METHODS.register("moco", "MoCo v2: InfoNCE against a queue of momentum-encoder keys, "
                          "shuffled BN (He et al. 2020; Chen et al. 2020)")
class MoCo(Method):
    """MoCo v2: query encoder, momentum key encoder, queue of keys, split (shuffled) BN."""

    name = "moco"
    Config = MoCoConfig
    paper = "He, Fan, Wu, Xie, Girshick, CVPR 2020; Chen, Fan, Girshick, He, arXiv 2020"
    sync_batch_norm = False  # shuffled BN: statistics per device (and per split) by design
    collapse_hint = ("lower --lr, raise --key-momentum towards 0.999, or keep shuffled batch "
                     "norm on (--batch-norm-splits 8)")
    # The paper's SGD at 0.03 per 256 images (0.06 at batch 512 as in the CIFAR demo),
    # weight decay 1e-4, cosine decay; see the module docstring for the other choices.
    recipe = TrainingRecipe(
        optimizer="sgd", learning_rate=0.03, weight_decay=1e-4, batch_size=512,
        warmup_epochs=1.0, epochs=100,
    )

    def __init__(self, backbone: nn.Module, config: MoCoConfig, data: DataInfo) -> None:
        if config.batch_norm_splits < 1:
            raise UserError(f"--batch-norm-splits must be at least 1, got "
                            f"{config.batch_norm_splits}")
        if config.queue_size < 1:
            raise UserError(f"--queue-size must be at least 1, got {config.queue_size}")
        if not 0.0 <= config.key_momentum <= 1.0:
            raise UserError(f"--key-momentum must be in [0, 1], got {config.key_momentum}")
        backbone = convert_to_split_batch_norm(backbone, config.batch_norm_splits)
        super().__init__(backbone, config, data)
        view_size = resolve_view_size(backbone, data, config.view_size)
        blur = config.blur_probability
        if blur is None:
            blur = 0.5 if view_size >= BLUR_MIN_VIEW_SIZE else 0.0
        hidden = config.projection_hidden_dim or backbone.feature_dim
        # Stored resolved, so a resumed run keeps its network and views if a default changes.
        self.config = config = dataclasses.replace(
            config, view_size=view_size, blur_probability=blur, projection_hidden_dim=hidden)
        self.views = SimCLRViews(
            image_size=view_size, mean=data.mean, std=data.std,
            crop_scale=(config.crop_scale_min, 1.0), jitter_strength=config.jitter_strength,
            grayscale_p=config.grayscale_probability, blur_p=blur)
        self.projection = ProjectionHead(backbone.feature_dim, hidden, config.projection_dim,
                                         batch_norm=False)
        self.key_backbone = copy_as_teacher(self.backbone)
        self.key_projection = copy_as_teacher(self.projection)
        self.queue = FeatureQueue(config.queue_size, config.projection_dim)

    # -- declarations ------------------------------------------------------------------------

    def schedules(self) -> dict[str, Schedule]:
        return {"key_momentum": Schedule(self.config.key_momentum)}

    def representations(self) -> dict[str, nn.Module]:
        return {"backbone": self.backbone, "momentum": self.key_backbone}

    # -- training ----------------------------------------------------------------------------

    def make_views(self, batch: Batch, generator: torch.Generator) -> list[torch.Tensor]:
        count, splits = batch.unlabeled.shape[0], self.config.batch_norm_splits
        if count % splits:
            raise UserError(f"shuffled batch norm splits each device's batch into "
                            f"{splits} groups, but a device has {count} images; choose a "
                            f"--batch-size that is a multiple of {splits} x devices, or "
                            "change --batch-norm-splits")
        return self.views(batch.unlabeled, generator)  # [first [n, ...], second [n, ...]]

    def _query(self, views: torch.Tensor) -> torch.Tensor:
        return self.projection(self.backbone(views))  # [n, projection_dim]

    @torch.no_grad()
    def _keys(self, views: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Keys of ``views`` from the key encoder; with several splits its batch is shuffled
        (so each key's batch-norm group differs from its query's) and then put back."""
        if self.config.batch_norm_splits == 1:
            return self.key_projection(self.key_backbone(views))
        order = torch.randperm(views.shape[0], generator=generator,
                               device=generator.device).to(views.device)  # [n]
        shuffled = self.key_projection(self.key_backbone(views[order]))  # row i: image order[i]
        return torch.empty_like(shuffled).index_copy_(0, order, shuffled)  # [n, D] in order

    def training_loss(self, inputs: list[torch.Tensor], step: StepInfo) -> dict[str, torch.Tensor]:
        first, second = inputs
        config, queue = self.config, self.queue.queue
        query = self._query(first)
        key = self._keys(second, step.generator)
        loss = moco_queue_loss(query, key, queue, config.temperature)
        keys = [key]
        if config.symmetric:
            other_key = self._keys(first, step.generator)
            other_loss = moco_queue_loss(self._query(second), other_key, queue,
                                         config.temperature)
            loss = (loss + other_loss) / 2
            keys.append(other_key)
        # After every loss term: this step's keys are never negatives of this step's queries.
        for part in keys:
            self.queue.enqueue_(part)
        return {"loss": loss, "embedding_spread": embedding_spread(query)}

    @torch.no_grad()
    def after_optimizer_step(self, step: StepInfo) -> None:
        momentum = step.value("key_momentum")
        ema_update_(self.key_backbone, self.backbone, momentum, buffers="own")
        ema_update_(self.key_projection, self.projection, momentum, buffers="own")
