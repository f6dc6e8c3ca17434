r"""Classification against pseudo-labels of the whole dataset: DeepCluster and SeLa.

DeepCluster (Caron, Bojanowski, Joulin, Douze, "Deep Clustering for Unsupervised Learning of
Visual Features", ECCV 2018) labels every image with its k-means cluster and trains a
classifier on the labels; SeLa (Asano, Rupprecht, Vedaldi, "Self-labelling via simultaneous
clustering and representation learning", ICLR 2020) labels every image with balanced
assignments for each of several heads and trains each head on its own labels. Both losses
are cross-entropies of a batch against stored labels; the labels come from the dataset-wide
step (k-means, Sinkhorn-Knopp), not from the loss.

Typical step of a method (labels in a buffer of one row per training image)::

    logits = classifier(backbone(views))
    loss = cluster_balanced_cross_entropy(logits, labels[indices], weights)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["cluster_balanced_cross_entropy", "cluster_balancing_weights",
           "multi_head_cross_entropy"]


def cluster_balancing_weights(sizes: torch.Tensor) -> torch.Tensor:
    r"""Per-cluster loss weights ``[K]`` that make every non-empty cluster count equally:

    .. math::

        w_c = \frac{N}{K_{\text{used}}\, n_c} \quad (n_c > 0), \qquad w_c = 0 \quad (n_c = 0),

    with :math:`n_c` the cluster sizes, :math:`N = \sum_c n_c` and :math:`K_{\text{used}}` the
    number of non-empty clusters. Over the dataset the weights average to 1
    (:math:`\sum_i w_{y_i} = N`), and the expected weighted loss of an image drawn uniformly
    is the loss of an image drawn by first picking a non-empty cluster uniformly, then one of
    its images: DeepCluster's uniform sampling over pseudo-labels (its ``UnifLabelSampler``,
    section 3.3: "sample images based on a uniform distribution over the classes") in
    expectation, while the engine's sampler still sees every image once an epoch."""
    sizes = sizes.float()
    used = (sizes > 0).sum().clamp_min(1)
    weights = sizes.sum() / (used * sizes.clamp_min(1))
    return torch.where(sizes > 0, weights, torch.zeros_like(weights))


def cluster_balanced_cross_entropy(logits: torch.Tensor, labels: torch.Tensor,
                                   weights: torch.Tensor | None = None) -> torch.Tensor:
    r"""DeepCluster's loss, each image weighted by its cluster (Caron et al. 2018, eq. 1
    with :func:`cluster_balancing_weights` in place of uniform sampling over clusters):

    .. math::

        \mathcal{L} = \frac{1}{B} \sum_{i=1}^{B} w_{y_i}
            \left(-\log \frac{\exp(z_{i, y_i})}{\sum_{c} \exp(z_{i, c})}\right)

    for logits ``z [B, K]``, pseudo-labels ``y [B]`` and weights ``w [K]`` (all 1 when
    ``weights`` is ``None``: plain cross-entropy). The mean is over the batch, not a
    normalisation by the batch's weights, so it is an unbiased estimate of the dataset's
    weighted loss and the mean over devices of the devices' losses is the global batch's."""
    per_image = F.cross_entropy(logits.float(), labels, reduction="none")  # [B]
    if weights is not None:
        per_image = per_image * weights[labels]
    return per_image.mean()


def multi_head_cross_entropy(logits: Sequence[torch.Tensor],
                             labels: torch.Tensor) -> torch.Tensor:
    r"""SeLa's loss (Asano et al. 2020, eq. 2 averaged over heads, section 3.5): head ``h``
    predicts its own labels,

    .. math::

        \mathcal{L} = \frac{1}{H} \sum_{h=1}^{H} \frac{1}{B} \sum_{i=1}^{B}
            -\log \frac{\exp(z^{h}_{i, y^{h}_i})}{\sum_{c} \exp(z^{h}_{i, c})}

    for ``H`` logits ``z^h [B, K_h]`` and labels ``y [H, B]``."""
    if len(logits) != labels.shape[0]:
        raise ValueError(f"{len(logits)} heads but labels for {labels.shape[0]}")
    losses = [F.cross_entropy(head.float(), head_labels)
              for head, head_labels in zip(logits, labels, strict=True)]
    return torch.stack(losses).mean()
