r"""SwAV's swapped prediction: every view predicts the balanced cluster codes of the others.

Caron, Misra, Mairal, Goyal, Bojanowski, Joulin, "Unsupervised Learning of Visual Features
by Contrasting Cluster Assignments", NeurIPS 2020. The scores of a view are the cosines
between its L2-normalised embedding and K unit prototypes; the codes of a global view are
the Sinkhorn-Knopp transport plan of its scores over the global batch (eq. 3,
:func:`fewlabels.clustering.sinkhorn.sinkhorn_knopp`), optionally with the scores of a queue
of past embeddings to balance over more samples. The codes carry no gradient.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from fewlabels.clustering.sinkhorn import sinkhorn_knopp


def _views(rows: int, images: int, name: str) -> int:
    if images < 1 or rows % images != 0:
        raise ValueError(f"{name} has {rows} rows, not a multiple of the {images} images")
    return rows // images


@torch.no_grad()
def swav_codes(
    scores: torch.Tensor,
    num_global_views: int = 2,
    epsilon: float = 0.05,
    iterations: int = 3,
    queue_scores: Sequence[torch.Tensor] | None = None,
    across_devices: bool = True,
) -> torch.Tensor:
    r"""SwAV's codes :math:`Q` of the global views: Sinkhorn-Knopp per view, no gradient.

    Caron et al. 2020, eq. (3) and Algorithm 1: for each global view g, the scores of its n
    images (``[n, K]``, all devices' rows balanced together when ``across_devices``) go
    through ``iterations`` Sinkhorn-Knopp iterations with entropy weight ``epsilon``; each
    row of the result is an image's soft assignment over the K prototypes, and each prototype
    gets an equal share of the batch. With ``queue_scores`` (one ``[m, K]`` tensor per global
    view: the current prototypes' scores of past embeddings of that view), the plan is
    computed over the queue's rows and the batch's and only the batch's rows are kept, as in
    the paper's code for small batches.

    Args:
        scores: ``[G*n, K]`` the global views' scores, view-major (row ``g*n + i``).
        num_global_views: G.
        queue_scores: G tensors ``[m, K]`` or None.

    Returns:
        ``[G*n, K]`` float32 codes, rows summing to 1.
    """
    images = _views(scores.shape[0], num_global_views, "scores")
    if queue_scores is not None and len(queue_scores) != num_global_views:
        raise ValueError(f"expected one queue per global view ({num_global_views}), got "
                         f"{len(queue_scores)}")
    codes = []
    for view, part in enumerate(scores.detach().split(images)):
        if queue_scores is not None:
            part = torch.cat([queue_scores[view].detach().to(part.dtype), part])
        plan = sinkhorn_knopp(part, epsilon, iterations, across_devices=across_devices)
        codes.append(plan[-images:])
    return torch.cat(codes)


def swav_loss(
    scores: torch.Tensor,
    codes: torch.Tensor,
    temperature: float = 0.1,
    num_global_views: int = 2,
) -> torch.Tensor:
    r"""SwAV's swapped-prediction loss.

    Caron et al. 2020, eqs. (1)-(2) with multi-crop (Section 3.2): with
    :math:`p^{(v)}_i = \mathrm{softmax}(z^{(v)\top}_i C / \tau)` the prediction of view v of
    image i (``scores / temperature``) and :math:`q^{(g)}_i` the codes of global view g,

    .. math::

        \mathcal{L} = \frac{1}{G} \sum_{g=1}^{G} \frac{1}{V - 1} \sum_{v \ne g}
            \frac{1}{n} \sum_{i=1}^{n} -\sum_k q^{(g)}_{ik} \log p^{(v)}_{ik},

    every view (global and local) predicting the codes of every *other* global view, as in
    the paper's code (``crops_for_assign`` = the global views). Computed as one matmul over
    the (g, v) pairs, in float32. Local to each device: the codes already balance the global
    batch, and DDP's averaged gradients are those of the global batch.

    Args:
        scores: ``[V*n, K]`` all views' scores, view-major, the G global views first.
        codes: ``[G*n, K]`` the global views' codes (:func:`swav_codes`; detached here).
        temperature: :math:`\tau` (0.1).
        num_global_views: G (2).

    Example::

        scores = prototypes(F.normalize(projection(backbone(views)), dim=1))  # [V*n, K]
        codes = swav_codes(scores[: 2 * n], 2, epsilon=0.05)
        loss = swav_loss(scores, codes, temperature=0.1, num_global_views=2)
    """
    if scores.dim() != 2 or codes.dim() != 2 or scores.shape[1] != codes.shape[1]:
        raise ValueError(f"expected scores [V*n, K] and codes [G*n, K], got "
                         f"{tuple(scores.shape)} and {tuple(codes.shape)}")
    images = _views(codes.shape[0], num_global_views, "codes")
    views = _views(scores.shape[0], images, "scores")
    if views < max(num_global_views, 2):
        raise ValueError(f"the scores need the {num_global_views} global views and at least "
                         f"one other view, got {views} views of {images} images")
    clusters = scores.shape[1]
    with torch.autocast(device_type=scores.device.type, enabled=False):
        log_predictions = F.log_softmax(scores.float() / temperature, dim=1)  # [V*n, K]
        targets = codes.detach().float().reshape(num_global_views, images * clusters)
        # Entry (g, v): sum over images and prototypes of q^(g) log p^(v); [G, V].
        products = targets @ log_predictions.reshape(views, images * clusters).T
    pairs = ~torch.eye(num_global_views, views, dtype=torch.bool, device=products.device)
    return -(products[pairs] / images).mean()
