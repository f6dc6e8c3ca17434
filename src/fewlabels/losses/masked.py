"""Losses of masked image modelling: MAE, SimMIM and BEiT-style token prediction.

Each averages over the masked positions of the global batch: the local sum is divided by the
number of masked positions summed over all devices, times the number of devices, so that
with DDP averaging the gradients, two processes equal one on the global batch even when the
masks hold different numbers of patches (SimMIM's blocks, BEiT's block-wise masking).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fewlabels import distributed


def _global_count(count: torch.Tensor) -> torch.Tensor:
    """``count`` summed over devices, divided by the number of devices (see the module
    docstring); at least a tiny positive number."""
    total = distributed.all_reduce_sum_no_gradient(count.float())
    return (total / distributed.world_size()).clamp_min(1e-12)


def normalized_patch_targets(patches: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Each patch ``[..., P]`` minus its mean, divided by ``sqrt(var + eps)`` (the unbiased
    variance of its ``P`` values, as MAE's code)."""
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True)
    return (patches - mean) / (var + eps).sqrt()


def mae_loss(predictions: torch.Tensor, patches: torch.Tensor, mask: torch.Tensor,
             normalize_targets: bool = False, eps: float = 1e-6) -> torch.Tensor:
    """MAE's reconstruction loss: mean squared error on the masked patches only.

    He, Chen, Xie, Li, Dollar, Girshick, "Masked Autoencoders Are Scalable Vision
    Learners", CVPR 2022, section 3. With ``y_l`` the target pixels of patch ``l`` (``P``
    values), ``yhat_l`` the decoder's prediction and ``m_l = 1`` where the patch was masked:

        L = sum_l m_l * (1/P) ||yhat_l - y_l||^2  /  sum_l m_l

    over the patches of every image. With ``normalize_targets`` (the paper's "normalized
    pixels", Table 1d) ``y_l = (x_l - mean(x_l)) / sqrt(var(x_l) + eps)`` per patch.

    Args:
        predictions: ``[N, L, P]``.
        patches: the target patches ``[N, L, P]`` (:func:`~fewlabels.models.patches.patchify`).
        mask: ``[N, L]``, True (or 1) where masked; visible patches do not count.
    """
    targets = normalized_patch_targets(patches, eps) if normalize_targets else patches
    per_patch = (predictions.float() - targets.float()).pow(2).mean(dim=-1)  # [N, L]
    weights = mask.float()
    return (per_patch * weights).sum() / _global_count(weights.sum())


def simmim_loss(predictions: torch.Tensor, patches: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
    """SimMIM's loss: L1 distance on the masked pixels, averaged over them.

    Xie, Zhang, Cao, Lin, Bao, Yao, Dai, Hu, "SimMIM: a Simple Framework for Masked Image
    Modeling", CVPR 2022, equation (1): with ``x`` and ``y`` the predicted and true values of
    the masked pixels ``M`` (every channel of a pixel counts once),

        L = (1 / Omega(x_M)) ||y_M - x_M||_1

    where ``Omega(x_M)`` is the number of masked values. Given as patches ``[N, L, P]`` and a
    patch mask ``[N, L]``: ``sum_l m_l ||yhat_l - y_l||_1 / (P sum_l m_l)``, the same number
    as on pixels since every masked patch holds ``P`` masked values.
    """
    per_patch = (predictions.float() - patches.float()).abs().mean(dim=-1)  # [N, L]
    weights = mask.float()
    return (per_patch * weights).sum() / _global_count(weights.sum())


def masked_token_loss(logits: torch.Tensor, tokens: torch.Tensor,
                      mask: torch.Tensor) -> torch.Tensor:
    """BEiT's masked image modelling loss: cross-entropy of the visual tokens of the masked
    patches.

    Bao, Dong, Piao, Wei, "BEiT: BERT Pre-Training of Image Transformers", ICLR 2022,
    equation (1): with ``z_l`` the token of patch ``l``, ``p(z_l | x^M)`` the softmax of the
    head's logits at position ``l`` of the masked image and ``M`` the masked positions,

        L = -(1 / |M|) sum_{l in M} log p(z_l | x^M)

    Args:
        logits: ``[N, L, K]`` over a vocabulary of ``K`` tokens.
        tokens: ``[N, L]`` long, the true token of every patch.
        mask: ``[N, L]``, True where masked; other positions do not count.
    """
    per_position = F.cross_entropy(logits.float().flatten(0, 1), tokens.flatten(),
                                   reduction="none")  # [N * L]
    weights = mask.float().flatten()
    return (per_position * weights).sum() / _global_count(weights.sum())
