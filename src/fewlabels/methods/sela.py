"""SeLa: self-labelling by simultaneous clustering and representation learning.

Asano, Rupprecht, Vedaldi, "Self-labelling via simultaneous clustering and representation
learning", ICLR 2020. Several linear clustering heads (``clustering_heads``, each over
``clusters`` classes) sit on the backbone; every head is trained by cross-entropy to predict
its own pseudo-label of each image
(:func:`~fewlabels.losses.pseudo_labels.multi_head_cross_entropy`).
The labels of the whole dataset are the other half of the same objective: with the heads'
posteriors ``P = softmax(logits)`` of every training image (backbone in eval mode,
un-augmented images), the labels maximise ``sum_i log P[i, y_i]`` under the equipartition
constraint that every cluster holds N/K images. The paper relaxes this to the
entropy-regularised transport ``Q = diag(a) P^lambda diag(b)`` and solves it by
Sinkhorn-Knopp (:func:`~fewlabels.clustering.sinkhorn.sinkhorn_knopp` with scores
``log P`` and epsilon ``1/lambda``). Its code takes each image's arg-max of ``Q``, which
balances the clusters only approximately; here ``Q`` is rounded to hard labels with exactly
N/K images per cluster (:func:`~fewlabels.clustering.balanced_labels.balanced_hard_labels`:
an image keeps its arg-max unless its cluster is full). ``equipartition false`` replaces all
this by each head's plain arg-max, the unconstrained self-labelling that the paper shows
degenerates (all images in a few clusters).

When the labels are recomputed. The paper recomputes them a fixed number of times spread
over training (``nopts``: at iterations ``T (i / nopts)^2`` on ImageNet, denser early, when
the network changes fastest). With a time budget the number of steps is unknown in advance,
so here the points are fractions of training, ``p_i = (i / label_updates)^2`` for
``i = 0 .. label_updates - 1``, and the labels are recomputed at the start of an epoch
(where the engine offers the whole dataset) whenever the progress of training has passed a
point not yet used: the progress is the fraction of the epochs or of the time budget spent
(``StepInfo.progress`` of the last step, kept in a buffer), so the same option works for both.
Labels change at most once per epoch: a short run relabels every epoch. The default, 10
updates, is the paper's ImageNet rate (100 updates in 200 epochs) for the 15-25 epochs of a
10-minute run here, where one update costs about as much as half an epoch of training (a
pass over the 60,000 images, then one Sinkhorn-Knopp and rounding per head). The labels
(``[heads, N]``), the updates done and the last progress are buffers, so a resumed run
trains on the same labels and relabels at the same points.

Differences from the paper (AlexNet or ResNet-50, 3000 clusters x 10 heads and lambda 25 on
ImageNet; 128 clusters x 10 heads and lambda 10 on CIFAR; SGD 0.05 with step decay) for
28-32 px images and runs of minutes on a CPU: 3 heads of 128 clusters (every head costs a
Sinkhorn-Knopp over the dataset at every update); lambda 10 as for CIFAR; exact equal
cluster sizes (above); SimCLR's augmentations on one view of 3/4 of the image side (20 px
for Fashion-MNIST), crops of 40-100 % instead of 20-100 %; SGD at 0.05 per 256 images with
weight decay 5e-4 (the paper's CIFAR decay), a cosine after one warm-up epoch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fewlabels.clustering.balanced_labels import balanced_hard_labels
from fewlabels.clustering.metrics import normalized_mutual_information
from fewlabels.clustering.sinkhorn import sinkhorn_knopp
from fewlabels.errors import UserError
from fewlabels.losses.pseudo_labels import multi_head_cross_entropy
from fewlabels.methods.base import (
    Batch,
    DataInfo,
    EpochContext,
    Method,
    StepInfo,
    TrainingRecipe,
    check_num_images,
    check_options,
    embedding_spread,
    single_view_recipe,
)
from fewlabels.methods.registry import METHODS
from fewlabels.options import option


@dataclass
class SeLaConfig:
    clustering_heads: int = option(
        3, "clustering heads, each with its own labels (the paper: up to 10)")
    clusters: int = option(128, "clusters K of every head (the paper: 128 on CIFAR, 3000 on "
                                "ImageNet)")
    inverse_entropy_weight: float = option(
        10.0, "lambda: the labels' transport is diag(a) P^lambda diag(b); larger is closer to "
              "hard assignments (the paper: 10 on CIFAR, 25 on ImageNet)", flag="lambda")
    equipartition: bool = option(
        True, "balanced labels (N/K images per cluster) by Sinkhorn-Knopp; false: each "
              "head's plain arg-max (the unconstrained ablation, which degenerates)")
    label_updates: int = option(
        10, "label updates over training, at progress (i/U)^2 for i < U, each at the first "
            "epoch start at or after its point (a short run relabels every epoch)")
    sinkhorn_iterations: int = option(
        100, "Sinkhorn-Knopp iterations at most per head and update (the rounding to exact "
             "sizes makes up for columns not fully converged)")
    sinkhorn_tolerance: float = option(
        1e-2, "stop Sinkhorn-Knopp once every cluster's mass is within this relative error")
    view_size: int = option(
        0, "side of the training views in pixels; 0: 3/4 of the image side rounded down to a "
           "multiple of 4 (20 for 28 px images)")
    crop_scale_min: float = option(0.4, "smallest crop area, as a fraction of the image")
    jitter_strength: float = option(
        0.5, "colour jitter strength s: brightness, contrast, saturation 0.8 s, hue 0.2 s")
    grayscale_probability: float = option(0.2, "probability of converting a view to gray")


def update_points(count: int) -> torch.Tensor:
    """The fractions of training at which labels are due: ``(i / count)^2``, ``i < count``."""
    return (torch.arange(count, dtype=torch.float64) / count) ** 2


# Floor of lambda log P: the transport plan gives no entry less than exp(-250) of its row's
# largest weight, which keeps the scores' range within sinkhorn_knopp's fast float64 form
# (two matrix-vector products an iteration; its log-domain form is ten times slower).
LOG_WEIGHT_FLOOR = -250.0


@torch.no_grad()
def self_labels(logits: torch.Tensor, inverse_entropy_weight: float, equipartition: bool,
                iterations: int = 100, tolerance: float = 1e-2) -> torch.Tensor:
    """SeLa's labels ``int64 [N]`` of one head from its logits ``[N, K]``: the transport plan
    ``diag(a) P^lambda diag(b)`` with equal cluster masses (Sinkhorn-Knopp on the scores
    ``lambda log P``, floored at ``LOG_WEIGHT_FLOOR``, with epsilon 1) rounded to exactly
    balanced hard labels; or, without ``equipartition``, the arg-max of the logits.

    The floor changes only weights ``P^lambda`` below ``exp(-250)`` (posteriors under about
    1e-11 at lambda 10), which the paper's float64 code itself rounds to zero below
    ``exp(-745)``; the rounding to exact sizes makes up for a plan whose columns have not
    fully converged within ``iterations``."""
    if not equipartition:
        return logits.argmax(1)
    scores = F.log_softmax(logits.float(), dim=1).mul_(inverse_entropy_weight)
    plan = sinkhorn_knopp(scores.clamp_min_(LOG_WEIGHT_FLOOR), 1.0, iterations,
                          tolerance=tolerance)
    return balanced_hard_labels(plan)


@METHODS.register("sela", "SeLa: self-labelling with balanced pseudo-labels of the whole "
                          "dataset from Sinkhorn-Knopp, several heads (Asano et al. 2020)")
class SeLa(Method):
    """SeLa: backbone + linear clustering heads, each trained on its own balanced labels."""

    name = "sela"
    Config = SeLaConfig
    paper = "Asano, Rupprecht, Vedaldi, ICLR 2020"
    collapse_hint = "keep --equipartition true, lower --lr, or raise --lambda"
    recipe = TrainingRecipe(
        optimizer="sgd", learning_rate=0.05, weight_decay=5e-4, batch_size=512,
        warmup_epochs=1.0, epochs=100,
    )

    def __init__(self, backbone: nn.Module, config: SeLaConfig, data: DataInfo) -> None:
        check_num_images(data, "SeLa keeps a pseudo-label per image and needs")
        checks = [
            (config.clustering_heads >= 1, f"--clustering-heads must be at least 1, got "
                                           f"{config.clustering_heads}"),
            (config.clusters >= 2, f"--clusters must be at least 2, got {config.clusters}"),
            (config.clusters <= data.num_images,
             f"--clusters {config.clusters} is more than the {data.num_images} training "
             "images; choose fewer clusters"),
            (config.inverse_entropy_weight > 0, "--lambda must be positive"),
            (config.label_updates >= 1, "--label-updates must be at least 1"),
            (config.sinkhorn_iterations >= 1, "--sinkhorn-iterations must be at least 1"),
            (config.sinkhorn_tolerance > 0, "--sinkhorn-tolerance must be positive"),
        ]
        check_options(checks)
        super().__init__(backbone, config, data)
        self.views, view_size = single_view_recipe(backbone, config, data)
        # Stored resolved, so a resumed run keeps its views if the default rule changes.
        self.config = dataclasses.replace(config, view_size=view_size)
        self.heads = nn.ModuleList(nn.Linear(backbone.feature_dim, config.clusters)
                                   for _ in range(config.clustering_heads))
        self.register_buffer("labels", torch.zeros(config.clustering_heads, data.num_images,
                                                   dtype=torch.long))
        self.register_buffer("label_updates_done", torch.zeros((), dtype=torch.long))
        self.register_buffer("last_progress", torch.zeros(()))

    # -- between epochs ----------------------------------------------------------------------

    def labels_due(self) -> int:
        """How many update points the progress so far has passed (0 before any step)."""
        points = update_points(self.config.label_updates)
        return int((points <= float(self.last_progress)).sum())

    def on_epoch_start(self, context: EpochContext) -> dict[str, float] | None:
        config = self.config
        due = self.labels_due()
        if due <= int(self.label_updates_done):
            return None
        if context.num_images != self.labels.shape[1]:
            raise UserError(f"SeLa stores {self.labels.shape[1]} labels per head but the run "
                            f"trains on {context.num_images} images; start a new run on this "
                            "data")
        features = context.features(self.backbone)  # [N, D]
        numbers: dict[str, float] = {}
        first_update = int(self.label_updates_done) == 0
        for index, head in enumerate(self.heads):
            with torch.no_grad():
                logits = head(features)  # [N, K]
            labels = self_labels(logits, config.inverse_entropy_weight, config.equipartition,
                                 config.sinkhorn_iterations, config.sinkhorn_tolerance)
            numbers[f"clusters_in_use_head{index}"] = float(labels.unique().numel())
            if index == 0 and not first_update:
                numbers["nmi_previous"] = normalized_mutual_information(self.labels[0], labels)
            self.labels[index].copy_(labels)
        numbers["clusters_in_use"] = min(v for k, v in numbers.items()
                                         if k.startswith("clusters_in_use_head"))
        self.label_updates_done.fill_(due)
        numbers["label_updates"] = float(due)
        return numbers

    # -- every step --------------------------------------------------------------------------

    def make_views(self, batch: Batch, generator: torch.Generator) -> tuple:
        if batch.indices is None:
            raise ValueError("SeLa needs the batch's dataset indices (its pseudo-labels)")
        return self.views.all_views(batch.unlabeled, generator), batch.indices  # [n, ...], [n]

    def training_loss(self, inputs: tuple, step: StepInfo) -> dict[str, torch.Tensor]:
        views, indices = inputs
        features = self.backbone(views)  # [n, feature_dim]
        logits = [head(features) for head in self.heads]  # heads x [n, clusters]
        loss = multi_head_cross_entropy(logits, self.labels[:, indices])
        return {"loss": loss, "embedding_spread": embedding_spread(features)}

    def after_optimizer_step(self, step: StepInfo) -> None:
        # The progress the next epoch start compares with the update points.
        self.last_progress.fill_(step.progress)

    # -- declarations ------------------------------------------------------------------------

    def cluster_heads(self) -> dict[str, nn.Module]:
        return {str(index): nn.Sequential(self.backbone, head)
                for index, head in enumerate(self.heads)}
