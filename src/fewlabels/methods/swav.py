"""SwAV: swapped prediction of balanced cluster codes between views.

Caron, Misra, Mairal, Goyal, Bojanowski, Joulin, "Unsupervised Learning of Visual Features by
Contrasting Cluster Assignments", NeurIPS 2020. Backbone -> projection head (Linear-BN-ReLU-
Linear) -> L2-normalised embedding z -> scores against K unit prototypes (a linear layer
without bias). The codes of each global view are Sinkhorn-Knopp's balanced assignment of its
scores over the global batch (epsilon 0.05, 3 iterations, all-reduced across devices; no
gradient), and every view predicts, with softmax(scores / 0.1), the codes of the other
global views (``fewlabels.losses.swav``). As in the paper's code: the prototypes are
renormalised to unit length after every optimiser step and get no update during the first
epoch (``freeze_prototypes_epochs``); LARS and weight decay apply to them as to every weight
matrix; the projection head sees all views in one pass (its batch norm over all crops); an
optional queue of past embeddings of the global views (``queue_length``, from
``queue_start_epoch``) joins the batch in the Sinkhorn-Knopp step once it is full, and is
never used in the loss. The backbone is the representation evaluated; the prototypes' scores
are the method's own clusters (:meth:`SwAV.cluster_heads`).

The queue is one copy of the global queue on every device, fed with the gathered embeddings
(``FeatureQueue``), and each device passes its share of the rows (every W-th) to the
distributed Sinkhorn-Knopp: the union is the whole queue, as with the paper's per-device
queues, but checkpoints (written by one device) hold all of it, and a run may resume on
another number of devices. Its length need not be a multiple of the batch.

Differences from the paper's ImageNet recipe, for 28-32 px images and 10-minute runs on a CPU
(like DINO's and SimCLR's here; docs/benchmarks.md): global views of 3/4 of the image side
(20 px for Fashion-MNIST) with crops of 40-100% instead of 14-100%; no local views by default
(``--local-views 6`` for the paper's multi-crop; at a fixed budget they cost more than they
returned for DINO); colour jitter of strength 0.5 instead of 1 (SimCLR's tuned value);
300 prototypes instead of 3000 (10 classes; about 1.7 images of a 512 batch per prototype,
as 3000 for 4096 in the paper); a projection head of 512 hidden units instead of 2048; LARS at
0.6 per 256 images (the paper's batch-256 rate) falling to 1/1000 of it, with one epoch of
warm-up instead of none.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fewlabels.augment.multicrop import MultiCropViews
from fewlabels.distributed import all_reduce_sum_no_gradient, rank, world_size
from fewlabels.losses.swav import swav_codes, swav_loss
from fewlabels.methods.base import (
    Batch,
    DataInfo,
    Method,
    StepInfo,
    TrainingRecipe,
    check_options,
    embedding_spread,
    resolve_multicrop_sizes,
)
from fewlabels.methods.registry import METHODS
from fewlabels.models.heads import ProjectionHead, PrototypeHead
from fewlabels.models.memory import FeatureQueue
from fewlabels.options import option

NUM_GLOBAL_VIEWS = 2


@dataclass
class SwAVConfig:
    num_prototypes: int = option(300, "number of prototypes K (the paper: 3000 for ImageNet)")
    projection_dim: int = option(128, "size of the L2-normalised embedding")
    projection_hidden_dim: int = option(512, "hidden units of the projection head (the "
                                             "paper's 2048)")
    temperature: float = option(0.1, "temperature tau of the predictions")
    epsilon: float = option(0.05, "entropy weight of Sinkhorn-Knopp (lower: sharper codes; "
                                  "the paper's advice against collapse is 0.03)")
    sinkhorn_iterations: int = option(3, "Sinkhorn-Knopp iterations per step")
    freeze_prototypes_epochs: float = option(
        1.0, "epochs during which the prototypes get no update (the paper: about 1)")
    queue_length: int = option(
        0, "past embeddings per global view added to the codes' Sinkhorn-Knopp step once "
           "the queue is full (the paper at batch 256: 3840; 0: no queue)")
    queue_start_epoch: int = option(15, "epoch from which the queue is filled")
    global_view_size: int = option(
        0, "side of the global views in pixels; 0: 3/4 of the image side (as SimCLR's)")
    local_view_size: int = option(
        0, "side of the local views; 0: 3/5 of the global side rounded to a multiple of 4")
    local_views: int = option(
        0, "local views per image (the paper: 6; 0: the two global views only)")
    global_crop_scale: tuple[float, float] = option(
        (0.4, 1.0), "area of a global crop, as a fraction of the image: min,max (the paper: "
                    "0.14,1)")
    local_crop_scale: tuple[float, float] = option(
        (0.05, 0.4), "area of a local crop: min,max (the paper: 0.05,0.14)")
    jitter_strength: float = option(
        0.5, "colour jitter strength s: brightness, contrast, saturation 0.8 s, hue 0.2 s "
             "(the paper: 1)")
    blur_probability: float = option(0.5, "probability of Gaussian blur of every view")

    def __post_init__(self) -> None:
        checks = [
            (self.num_prototypes >= 2, "--num-prototypes must be at least 2"),
            (self.temperature > 0, "--temperature must be positive"),
            (self.epsilon > 0, "--epsilon must be positive"),
            (self.sinkhorn_iterations >= 1, "--sinkhorn-iterations must be at least 1"),
            (self.freeze_prototypes_epochs >= 0, "--freeze-prototypes-epochs must be at least 0"),
            (self.queue_length >= 0, "--queue-length must be at least 0 (0: no queue)"),
            (self.queue_start_epoch >= 0, "--queue-start-epoch must be at least 0"),
            (self.jitter_strength >= 0, "--jitter-strength must be at least 0"),
        ]
        check_options(checks)


class PrototypeScores(nn.Module):
    """Images -> the prototypes' scores ``[N, K]``: SwAV's own clusters (the arg-max)."""

    def __init__(self, backbone: nn.Module, projection: nn.Module,
                 prototypes: PrototypeHead) -> None:
        super().__init__()
        self.backbone, self.projection, self.prototypes = backbone, projection, prototypes

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.prototypes(self.projection(self.backbone(images)))  # [N, K]


@METHODS.register("swav", "SwAV: swapped prediction of Sinkhorn-Knopp cluster codes "
                          "(Caron et al. 2020)")
class SwAV(Method):
    """SwAV with online Sinkhorn-Knopp codes, swapped prediction, multi-crop and a queue."""

    name = "swav"
    Config = SwAVConfig
    paper = "Caron et al., NeurIPS 2020"
    collapse_hint = ("lower --epsilon (0.03), freeze the prototypes longer "
                     "(--freeze-prototypes-epochs), or lower --lr")
    # The paper's batch-256 recipe (LARS, 0.6 per 256 down to 0.0006, weight decay 1e-6)
    # with one epoch of warm-up, as SimCLR's and DINO's here.
    recipe = TrainingRecipe(
        optimizer="lars", learning_rate=0.6, final_learning_rate=0.0006, weight_decay=1e-6,
        batch_size=512, warmup_epochs=1.0, epochs=100,
    )

    queue_filled: torch.Tensor

    def __init__(self, backbone: nn.Module, config: SwAVConfig, data: DataInfo) -> None:
        super().__init__(backbone, config, data)
        global_size, local_size = resolve_multicrop_sizes(
            backbone, data, config.global_view_size, config.local_view_size, config.local_views)
        # Stored resolved, so a resumed run keeps its views if a default rule changes.
        self.config = dataclasses.replace(config, global_view_size=global_size,
                                          local_view_size=local_size)
        strength, blur = config.jitter_strength, config.blur_probability
        self.views = MultiCropViews(
            data.mean, data.std, global_size=global_size, local_size=local_size,
            local_views=config.local_views, global_scale=config.global_crop_scale,
            local_scale=config.local_crop_scale, global_blur=(blur,) * NUM_GLOBAL_VIEWS,
            global_solarize=(0.0,) * NUM_GLOBAL_VIEWS, local_blur=blur,
            brightness=0.8 * strength, contrast=0.8 * strength, saturation=0.8 * strength,
            hue=min(0.5, 0.2 * strength))
        self.projection = ProjectionHead(backbone.feature_dim, config.projection_hidden_dim,
                                         config.projection_dim)
        self.prototypes = PrototypeHead(config.projection_dim, config.num_prototypes)
        if config.queue_length:
            # Random unit rows at first (never used: the queue is used once full), the same
            # on every device.
            generator = torch.Generator().manual_seed(0)
            self.queues = nn.ModuleList(
                FeatureQueue(config.queue_length, config.projection_dim, generator)
                for _ in range(NUM_GLOBAL_VIEWS))
            # Embeddings enqueued since the queue started, up to its length.
            self.register_buffer("queue_filled", torch.zeros((), dtype=torch.long))

    # -- training ----------------------------------------------------------------------------

    def make_views(self, batch: Batch, generator: torch.Generator) -> tuple:
        return self.views(batch.unlabeled, generator)  # globals [2N, ...], locals [L*N, ...]

    def embed(self, global_views: torch.Tensor,
              local_views: torch.Tensor | None = None) -> torch.Tensor:
        """L2-normalised embeddings of all views, view-major: ``[V*n, projection_dim]``. One
        backbone pass per resolution, one head pass over all views (the paper's code)."""
        features = self.backbone(global_views)
        if local_views is not None:
            features = torch.cat([features, self.backbone(local_views)])
        return F.normalize(self.projection(features), dim=1)

    def queue_in_use(self) -> bool:
        """True once the queue has been filled with real embeddings."""
        return bool(self.config.queue_length) and int(self.queue_filled) >= \
            self.config.queue_length

    @torch.no_grad()
    def _queue_scores(self) -> list[torch.Tensor]:
        """The current prototypes' scores of this device's share of each view's queue."""
        share = slice(rank(), None, world_size())
        return [self.prototypes(queue.queue[share]) for queue in self.queues]

    @torch.no_grad()
    def _enqueue(self, global_embeddings: torch.Tensor) -> None:
        for queue, embeddings in zip(self.queues, global_embeddings.chunk(NUM_GLOBAL_VIEWS),
                                     strict=True):
            queue.enqueue_(embeddings)  # gathered over devices, rank order
        added = global_embeddings.shape[0] // NUM_GLOBAL_VIEWS * world_size()
        self.queue_filled.clamp_(max=self.config.queue_length - added).add_(added)

    def training_loss(self, inputs: tuple, step: StepInfo) -> dict[str, torch.Tensor]:
        global_views, local_views = inputs
        images = global_views.shape[0] // NUM_GLOBAL_VIEWS
        embeddings = self.embed(global_views, local_views)  # [V*n, D]
        scores = self.prototypes(embeddings)  # [V*n, K]
        config = self.config
        use_queue = self.queue_in_use()
        codes = swav_codes(scores[: NUM_GLOBAL_VIEWS * images], NUM_GLOBAL_VIEWS,
                           config.epsilon, config.sinkhorn_iterations,
                           queue_scores=self._queue_scores() if use_queue else None)
        loss = swav_loss(scores, codes, config.temperature, NUM_GLOBAL_VIEWS)
        if config.queue_length and step.epoch >= config.queue_start_epoch:
            # After the codes that read the queue: this batch is not its own queue.
            self._enqueue(embeddings[: NUM_GLOBAL_VIEWS * images].detach())
        return {"loss": loss, "embedding_spread": embedding_spread(embeddings[:images]),
                "prototypes_in_use": _prototypes_in_use(scores[:images]),
                "queue_in_use": torch.tensor(float(use_queue))}

    def before_optimizer_step(self, step: StepInfo) -> None:
        """The paper's code freezes the prototypes for its first iterations: their gradient
        is dropped, so neither the update nor the weight decay moves them."""
        if step.step < self.config.freeze_prototypes_epochs * step.steps_per_epoch:
            for parameter in self.prototypes.parameters():
                parameter.grad = None

    @torch.no_grad()
    def after_optimizer_step(self, step: StepInfo) -> None:
        self.prototypes.normalize_()

    # -- declarations ------------------------------------------------------------------------

    def cluster_heads(self) -> dict[str, nn.Module]:
        return {"prototypes": PrototypeScores(self.backbone, self.projection, self.prototypes)}


@torch.no_grad()
def _prototypes_in_use(scores: torch.Tensor) -> torch.Tensor:
    """How many prototypes are the arg-max of at least one image of the global batch."""
    counts = torch.bincount(scores.argmax(dim=1), minlength=scores.shape[1]).float()
    return (all_reduce_sum_no_gradient(counts) > 0).sum().float()
