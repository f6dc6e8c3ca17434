"""Contrastive objectives."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fewlabels.engine.distributed import gather_with_gradient, rank


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
