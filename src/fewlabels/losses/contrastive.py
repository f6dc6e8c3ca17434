"""Contrastive objectives: SimCLR's NT-Xent and MoCo's InfoNCE (queue and batch forms)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fewlabels.distributed import gather_no_gradient, gather_with_gradient, rank


def nt_xent_loss(
    z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5, gather: bool = True
) -> torch.Tensor:
    r"""NT-Xent, the normalised temperature-scaled cross-entropy of SimCLR.

    Chen, Kornblith, Norouzi, Hinton, "A Simple Framework for Contrastive Learning of Visual
    Representations", ICML 2020, eq. (1). With :math:`z` the L2-normalised projections of the
    :math:`2N` views of a batch of :math:`N` images, :math:`s_{ij} = z_i^\top z_j`, and
    :math:`j(i)` the other view of image :math:`i`:

    .. math::

        \ell_i = -\log \frac{\exp(s_{i\,j(i)}/\tau)}
                            {\sum_{k \ne i} \exp(s_{ik}/\tau)},
        \qquad \mathcal{L} = \frac{1}{2N} \sum_{i=1}^{2N} \ell_i .

    Across devices (``gather=True``), the local views are the anchors and the views of the
    whole global batch are the candidates, gathered with gradients flowing back, so the mean
    of the per-device losses equals the loss of one process on the global batch.

    Args:
        z1, z2: ``[N, D]`` projections of the first and second view (not yet normalised).
        temperature: :math:`\tau`.
        gather: use the other devices' views as negatives when running distributed.

    Example::

        loss = nt_xent_loss(head(backbone(view1)), head(backbone(view2)), temperature=0.2)
    """
    z1 = F.normalize(z1, dim=1)  # [n, D]
    z2 = F.normalize(z2, dim=1)  # [n, D]
    n = z1.shape[0]
    anchors = torch.cat([z1, z2])  # [2n, D]
    if gather:
        all1, all2 = gather_with_gradient(z1), gather_with_gradient(z2)  # [N, D] each
        offset = rank() * n
    else:
        all1, all2, offset = z1, z2, 0
    total = all1.shape[0]
    candidates = torch.cat([all1, all2])  # [2N, D]
    logits = anchors @ candidates.T / temperature  # [2n, 2N]
    local = torch.arange(n, device=z1.device) + offset  # positions of our images in [0, N)
    self_index = torch.cat([local, local + total])  # each anchor's own column
    positive = torch.cat([local + total, local])  # the other view of the same image
    logits[torch.arange(2 * n, device=z1.device), self_index] = float("-inf")
    return F.cross_entropy(logits, positive)


def moco_queue_loss(
    query: torch.Tensor, key: torch.Tensor, queue: torch.Tensor, temperature: float = 0.2
) -> torch.Tensor:
    r"""InfoNCE against a queue of keys, the loss of MoCo v1 and v2.

    He, Fan, Wu, Xie, Girshick, "Momentum Contrast for Unsupervised Visual Representation
    Learning", CVPR 2020, eq. (1); Chen, Fan, Girshick, He, "Improved Baselines with Momentum
    Contrastive Learning", 2020 (:math:`\tau = 0.2`). With :math:`q` and :math:`k_+` the
    L2-normalised query and key of the same image and :math:`k_1..k_K` the queue:

    .. math::

        \mathcal{L} = \frac{1}{n} \sum_{i=1}^{n} -\log
            \frac{\exp(q_i \cdot k_{+,i} / \tau)}
                 {\exp(q_i \cdot k_{+,i} / \tau) + \sum_{j=1}^{K} \exp(q_i \cdot k_j / \tau)},

    the cross-entropy of logits ``[n, 1 + K]`` with target 0. Keys and queue carry no
    gradient. The queue is copied, so the caller may enqueue this step's keys right after
    the loss and before ``backward()`` (never before the loss: a key would then be its own
    query's negative). Across devices the queue is the same everywhere (``FeatureQueue``
    gathers before enqueueing) and each device's loss covers its own queries, so DDP's
    averaged gradients are those of the global batch.

    Args:
        query: ``[n, D]`` from the encoder being trained (normalised here).
        key: ``[n, D]`` from the momentum encoder, same images (normalised here, detached).
        queue: ``[K, D]`` unit rows, e.g. ``FeatureQueue.queue``.
        temperature: :math:`\tau`.

    Example::

        loss = moco_queue_loss(query, key, queue.queue, temperature=0.2)  # queue: FeatureQueue
        queue.enqueue_(key)  # after the loss, never before
    """
    if query.shape != key.shape or query.dim() != 2 or queue.dim() != 2:
        raise ValueError(f"expected query and key [n, D] and queue [K, D], got "
                         f"{tuple(query.shape)}, {tuple(key.shape)}, {tuple(queue.shape)}")
    query = F.normalize(query, dim=1)  # [n, D]
    key = F.normalize(key.detach(), dim=1).to(query.dtype)  # [n, D]
    negatives = queue.detach().to(dtype=query.dtype, copy=True)  # [K, D], safe to enqueue
    positive = (query * key).sum(dim=1, keepdim=True)  # [n, 1]
    logits = torch.cat([positive, query @ negatives.T], dim=1) / temperature  # [n, 1 + K]
    targets = torch.zeros(query.shape[0], dtype=torch.long, device=query.device)
    return F.cross_entropy(logits, targets)


def moco_batch_loss(
    query: torch.Tensor, key: torch.Tensor, temperature: float = 0.2, gather: bool = True
) -> torch.Tensor:
    r"""InfoNCE with the other images' keys of the global batch as negatives: MoCo v3.

    Chen, Xie, He, "An Empirical Study of Training Self-Supervised Vision Transformers",
    ICCV 2021, Algorithm 1 (``ctr``). With :math:`q_i` the local queries, :math:`k_j` the
    keys of all :math:`N` images of the global batch (L2-normalised, no gradient) and
    :math:`p(i)` the global position of local image :math:`i` (``rank * n + i``):

    .. math::

        \mathcal{L} = 2\tau \cdot \frac{1}{n} \sum_{i=1}^{n} -\log
            \frac{\exp(q_i \cdot k_{p(i)} / \tau)}{\sum_{j=1}^{N} \exp(q_i \cdot k_j / \tau)} .

    The factor :math:`2\tau` is the paper's pseudocode (it makes the gradient's scale
    independent of :math:`\tau`). The symmetric loss of the paper is
    ``moco_batch_loss(q1, k2) + moco_batch_loss(q2, k1)``. Keys are gathered across
    devices without gradient (``gather_no_gradient``; every device holds ``n`` images);
    each device's loss covers its own queries, so the mean over devices is the loss of one
    process on the global batch and DDP's averaged gradients are its gradients.

    Args:
        query: ``[n, D]`` from the encoder being trained (normalised here).
        key: ``[n, D]`` from the momentum encoder, same images (normalised here, detached).
        temperature: :math:`\tau` (0.2 in the paper's ViT recipes, 1.0 for ResNets).
        gather: use the other devices' keys as negatives when running distributed.

    Example::

        loss = moco_batch_loss(predictor(head(backbone(x1))), teacher(x2), temperature=0.2)
        loss = loss + moco_batch_loss(predictor(head(backbone(x2))), teacher(x1), 0.2)
    """
    if query.shape != key.shape or query.dim() != 2:
        raise ValueError(f"expected query and key [n, D], got {tuple(query.shape)} and "
                         f"{tuple(key.shape)}")
    query = F.normalize(query, dim=1)  # [n, D]
    key = F.normalize(key.detach(), dim=1).to(query.dtype)  # [n, D]
    n = query.shape[0]
    if gather:
        keys, offset = gather_no_gradient(key), rank() * n  # [N, D]
    else:
        keys, offset = key, 0
    logits = query @ keys.T / temperature  # [n, N]
    targets = torch.arange(n, device=query.device) + offset  # each query's own key
    return 2.0 * temperature * F.cross_entropy(logits, targets)
