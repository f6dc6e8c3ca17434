"""DeepCluster: k-means pseudo-labels of the whole dataset, learned by a classifier.

Caron, Bojanowski, Joulin, Douze, "Deep Clustering for Unsupervised Learning of Visual
Features", ECCV 2018. Before every epoch (or every ``recluster_every`` epochs) the features
of every training image (the backbone in eval mode on the un-augmented images) are
PCA-reduced to ``pca_dim`` dimensions, whitened and L2-normalised
(:func:`~fewlabels.clustering.pca.pca_whiten_normalize`), and clustered by k-means into
``clusters`` groups (:func:`~fewlabels.clustering.kmeans.kmeans`, which reassigns empty
clusters by splitting a large one, as the paper's section 3.3 does). Each image's cluster is
its pseudo-label, stored in the ``labels`` buffer (one entry per training image, so a
checkpoint holds them and a run resumed within an epoch trains on the same labels). The
classifier (the top linear layer) is then re-initialised (weights N(0, 0.01), biases 0, as
the paper's code) with its optimiser state reset, and the backbone and classifier learn to
predict the labels of augmented views by cross-entropy. Every clustering logs the clusters in
use, the empty clusters k-means reassigned and the NMI between this labelling and the
previous one (the paper's Fig. 2(b): how stable the assignments become).

Balancing the clusters. The paper samples images uniformly over clusters, so a huge cluster
cannot dominate the loss (the trivial solution of section 3.3). The engine's sampler visits
every image once an epoch, so the balance comes from loss weights instead: each image counts
``N / (K_used n_c)`` for a cluster of ``n_c`` images
(:func:`~fewlabels.losses.pseudo_labels.cluster_balancing_weights`), which gives the loss of
uniform sampling over clusters in expectation (``balance_clusters false`` turns it off).

Differences from the paper's ImageNet recipe (AlexNet or VGG-16 with Sobel filtering,
k = 10,000, PCA to 256, 20 iterations of faiss's k-means seeded with random points, SGD at
0.05 with batch 256 and weight decay 1e-5, 500 epochs) for 28-32 px images and runs of
minutes on a CPU: k = 100 (60,000 images: 600 per cluster, as ImageNet's 1.3M over 10,000
gives 130); PCA to 128 of the ConvNet's 512 features; no Sobel filter (one channel already
has no colour to shortcut through); SimCLR's augmentations on one view of 3/4 of the image
side (20 px for Fashion-MNIST) instead of crops and flips only; the top layer is in the
engine's optimiser (momentum, reset at each re-initialisation) rather than a fresh
momentum-free SGD; a cosine learning-rate decay after one warm-up epoch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from fewlabels.clustering.kmeans import kmeans
from fewlabels.clustering.metrics import normalized_mutual_information
from fewlabels.clustering.pca import pca_whiten_normalize
from fewlabels.errors import UserError
from fewlabels.losses.pseudo_labels import cluster_balanced_cross_entropy, cluster_balancing_weights
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
class DeepClusterConfig:
    clusters: int = option(
        100, "k, the clusters of each k-means (the paper: 10,000 for ImageNet's 1.3M images)")
    pca_dim: int = option(
        128, "dimensions the PCA keeps before whitening (the paper: 256); 0: all")
    kmeans_iterations: int = option(20, "Lloyd iterations of each k-means at most (faiss: 20)")
    recluster_every: int = option(1, "epochs between two clusterings (the paper: 1)")
    balance_clusters: bool = option(
        True, "weight each image's loss by N/(K n_c) for a cluster of n_c images, the loss "
              "of uniform sampling over clusters (the paper's balancing); false: plain mean")
    view_size: int = option(
        0, "side of the training views in pixels; 0: 3/4 of the image side rounded down to a "
           "multiple of 4 (20 for 28 px images)")
    crop_scale_min: float = option(0.4, "smallest crop area, as a fraction of the image")
    jitter_strength: float = option(
        0.5, "colour jitter strength s: brightness, contrast, saturation 0.8 s, hue 0.2 s")
    grayscale_probability: float = option(0.2, "probability of converting a view to gray")


def normal_reinit_(layer: nn.Linear, generator: torch.Generator, std: float = 0.01) -> None:
    """Weights drawn from N(0, std^2) with ``generator``, biases zero (in place)."""
    with torch.no_grad():
        layer.weight.normal_(0.0, std, generator=generator)
        layer.bias.zero_()


@METHODS.register("deepcluster", "DeepCluster: a classifier learns k-means pseudo-labels of "
                                 "the whole dataset, reclustered every epoch (Caron et al. 2018)")
class DeepCluster(Method):
    """DeepCluster: backbone + linear classifier over k-means clusters of PCA-whitened
    features, reclustered between epochs."""

    name = "deepcluster"
    Config = DeepClusterConfig
    paper = "Caron, Bojanowski, Joulin, Douze, ECCV 2018"
    collapse_hint = ("keep --balance-clusters true, lower --lr, or use more --clusters")
    # The paper's SGD (0.05 per 256 images, momentum 0.9, weight decay 1e-5), with a warm-up
    # and a cosine decay instead of a constant rate.
    recipe = TrainingRecipe(
        optimizer="sgd", learning_rate=0.05, weight_decay=1e-5, batch_size=512,
        warmup_epochs=1.0, epochs=100,
    )

    def __init__(self, backbone: nn.Module, config: DeepClusterConfig, data: DataInfo) -> None:
        check_num_images(data, "DeepCluster keeps a pseudo-label per image and needs")
        checks = [
            (config.clusters >= 2, f"--clusters must be at least 2, got {config.clusters}"),
            (config.clusters <= data.num_images,
             f"--clusters {config.clusters} is more than the {data.num_images} training "
             "images; choose fewer clusters"),
            (config.pca_dim >= 0, f"--pca-dim must be at least 0, got {config.pca_dim}"),
            (config.kmeans_iterations >= 1, "--kmeans-iterations must be at least 1"),
            (config.recluster_every >= 1, "--recluster-every must be at least 1"),
        ]
        check_options(checks)
        super().__init__(backbone, config, data)
        self.views, view_size = single_view_recipe(backbone, config, data)
        # Stored resolved, so a resumed run keeps its views if the default rule changes.
        self.config = dataclasses.replace(config, view_size=view_size)
        self.classifier = nn.Linear(backbone.feature_dim, config.clusters)
        self.register_buffer("labels", torch.zeros(data.num_images, dtype=torch.long))
        self.register_buffer("cluster_weights", torch.ones(config.clusters))
        self.register_buffer("clusterings", torch.zeros((), dtype=torch.long))

    # -- between epochs ----------------------------------------------------------------------

    def on_epoch_start(self, context: EpochContext) -> dict[str, float] | None:
        config = self.config
        if context.epoch % config.recluster_every:
            return None
        if context.num_images != self.labels.numel():
            raise UserError(f"DeepCluster stores {self.labels.numel()} labels but the run "
                            f"trains on {context.num_images} images; start a new run on this "
                            "data")
        features = context.features(self.backbone)  # [N, D]
        reduced = pca_whiten_normalize(features, config.pca_dim or None)
        # seeded with random points, as the paper's faiss k-means (k-means++ costs k passes)
        result = kmeans(reduced, config.clusters, generator=context.generator,
                        iterations=config.kmeans_iterations, init="random")
        labels = result.assignments.to(self.labels.device)
        numbers = {"clusters_in_use": float((result.cluster_sizes > 0).sum()),
                   "empty_clusters_reassigned": float(result.reassigned),
                   "kmeans_iterations": float(result.iterations)}
        if int(self.clusterings) > 0:
            numbers["nmi_previous"] = normalized_mutual_information(self.labels, labels)
        self.labels.copy_(labels)
        sizes = torch.bincount(labels, minlength=config.clusters)
        self.cluster_weights.copy_(cluster_balancing_weights(sizes) if config.balance_clusters
                                   else torch.ones_like(self.cluster_weights))
        self.clusterings += 1
        # A new classifier for the new labels, without the old one's momentum.
        normal_reinit_(self.classifier, context.generator)
        context.reset_optimizer_state(self.classifier.parameters())
        return numbers

    # -- every step --------------------------------------------------------------------------

    def make_views(self, batch: Batch, generator: torch.Generator) -> tuple:
        if batch.indices is None:
            raise ValueError("DeepCluster needs the batch's dataset indices (its pseudo-labels)")
        return self.views.all_views(batch.unlabeled, generator), batch.indices  # [n, ...], [n]

    def training_loss(self, inputs: tuple, step: StepInfo) -> dict[str, torch.Tensor]:
        views, indices = inputs
        features = self.backbone(views)  # [n, feature_dim]
        logits = self.classifier(features)  # [n, clusters]
        weights = self.cluster_weights if self.config.balance_clusters else None
        loss = cluster_balanced_cross_entropy(logits, self.labels[indices], weights)
        return {"loss": loss, "embedding_spread": embedding_spread(features)}

    # -- declarations ------------------------------------------------------------------------

    def cluster_heads(self) -> dict[str, nn.Module]:
        return {"classifier": nn.Sequential(self.backbone, self.classifier)}
