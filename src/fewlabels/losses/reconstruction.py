r"""Reconstruction objectives: context-encoder inpainting, its adversarial terms, and the
denoising autoencoder.

- :func:`masked_reconstruction_loss`: the L2 loss of Pathak, Krähenbühl, Donahue, Darrell,
  Efros, "Context Encoders: Feature Learning by Inpainting", CVPR 2016 (eq. 1), on the
  masked region, optionally with a band of context around it (:func:`overlap_weights`).
- :func:`discriminator_loss` and :func:`generator_adversarial_loss`: the two sides of the
  adversarial term (Goodfellow et al., "Generative Adversarial Nets", NIPS 2014; the context
  encoder's eq. 2-3), from a discriminator's logits.
- :func:`denoising_reconstruction_loss`: the reconstruction error of Vincent, Larochelle,
  Bengio, Manzagol, "Extracting and Composing Robust Features with Denoising Autoencoders",
  ICML 2008 (cross-entropy for inputs in [0, 1]) or the squared error (Vincent et al.,
  "Stacked Denoising Autoencoders", JMLR 2010, for real-valued inputs).

Every loss is a mean over the images of a per-image number, so on several devices, each
with its share of the batch, the gradient the engine averages is that of the whole batch.

Typical context-encoder step::

    weights = overlap_weights(mask, overlap=1, overlap_weight=1.0)
    loss = masked_reconstruction_loss(decoder(backbone(masked)), images, weights)
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

__all__ = ["denoising_reconstruction_loss", "discriminator_loss",
           "generator_adversarial_loss", "masked_reconstruction_loss", "overlap_weights"]


def overlap_weights(mask: torch.Tensor, overlap: int = 0,
                    overlap_weight: float = 0.0) -> torch.Tensor:
    """Per-pixel weights ``[N, 1, H, W]`` of the inpainting loss: 1 on the masked region
    (``mask``, bool ``[N, 1, H, W]``, True where masked), ``overlap_weight`` on the visible
    pixels within ``overlap`` pixels of it (a square neighbourhood: the region dilated by a
    ``2 overlap + 1`` max-pool), 0 elsewhere.

    The context encoder's code predicts a region a few pixels larger than the hole and
    weighs the loss on that visible border more, so the prediction joins its context
    smoothly; ``overlap = 0`` or ``overlap_weight = 0`` gives the paper's eq. 1 (the hole
    only)."""
    region = mask.float()
    if overlap <= 0 or overlap_weight == 0:
        return region
    dilated = F.max_pool2d(region, 2 * overlap + 1, stride=1, padding=overlap)
    return region + overlap_weight * (dilated - region)


def masked_reconstruction_loss(prediction: torch.Tensor, target: torch.Tensor,
                               weights: torch.Tensor) -> torch.Tensor:
    r"""The context encoder's reconstruction loss (Pathak et al. 2016, eq. 1), a weighted
    mean squared error per image averaged over the batch:

    .. math::

        \mathcal{L}_{rec} = \frac{1}{N} \sum_{n=1}^{N}
            \frac{\sum_{c,h,w} m_{n,h,w}\, (\hat x_{n,c,h,w} - x_{n,c,h,w})^2}
                 {C \sum_{h,w} m_{n,h,w}}

    for predictions ``prediction`` :math:`\hat x = F((1 - M) \odot x)` and targets
    ``target`` :math:`x` ``[N, C, H, W]`` (normalised pixels) and weights ``weights``
    :math:`m` ``[N, 1, H, W]``: the mask :math:`M` itself for the paper's
    :math:`\lVert M \odot (x - \hat x) \rVert_2^2` (normalised to a mean over the masked
    pixels), or :func:`overlap_weights`. An image whose weights are all zero contributes 0.
    """
    if prediction.shape != target.shape:
        raise ValueError(f"prediction {tuple(prediction.shape)} and target "
                         f"{tuple(target.shape)} differ in shape")
    squared = (prediction.float() - target.float()).square()  # [N, C, H, W]
    weights = weights.float()
    per_image = (squared * weights).sum(dim=(1, 2, 3))  # [N]
    normaliser = weights.sum(dim=(1, 2, 3)) * prediction.shape[1]  # [N]
    return (per_image / normaliser.clamp_min(1e-12)).mean()


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    r"""The discriminator's side of the adversarial term (Goodfellow et al. 2014; the
    context encoder's eq. 2), as a loss to minimise:

    .. math::

        \mathcal{L}_D = -\frac{1}{N} \sum_n \left[\log D(x_n)
            + \log\left(1 - D(\hat x_n)\right)\right]
          = \frac{1}{N} \sum_n \left[\operatorname{softplus}(-r_n)
            + \operatorname{softplus}(f_n)\right]

    with :math:`D = \sigma(\text{logit})`, real logits ``r [N]`` and logits ``f [N]`` of
    reconstructions. The reconstructions should reach the discriminator detached, so this
    term trains the discriminator alone."""
    return F.softplus(-real_logits.float()).mean() + F.softplus(fake_logits.float()).mean()


def generator_adversarial_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    r"""The generator's side of the adversarial term, in the non-saturating form the GAN
    paper recommends and the context encoder's code uses (real labels for the fakes):

    .. math::

        \mathcal{L}_{adv} = -\frac{1}{N} \sum_n \log D(\hat x_n)
          = \frac{1}{N} \sum_n \operatorname{softplus}(-f_n)

    for the logits ``f [N]`` of reconstructions. The discriminator should run with its
    parameters detached for this term, so it trains the encoder-decoder alone. The context
    encoder minimises :math:`\lambda_{rec} \mathcal{L}_{rec} + \lambda_{adv}
    \mathcal{L}_{adv}` with :math:`\lambda_{rec} = 0.999, \lambda_{adv} = 0.001` (eq. 3)."""
    return F.softplus(-fake_logits.float()).mean()


def denoising_reconstruction_loss(
    prediction: torch.Tensor, target: torch.Tensor,
    kind: Literal["cross-entropy", "mse"] = "cross-entropy",
) -> torch.Tensor:
    r"""The denoising autoencoder's reconstruction error of the clean image, a mean over
    pixels and channels of each image, averaged over the batch.

    ``"cross-entropy"`` (Vincent et al. 2008, for inputs in [0, 1], the decoder's output
    through a sigmoid): with logits :math:`z` (``prediction``) and clean pixels
    :math:`x \in [0, 1]` (``target``),

    .. math::

        \mathcal{L}_H = -\frac{1}{N C H W} \sum \left[x \log \sigma(z)
            + (1 - x) \log\left(1 - \sigma(z)\right)\right],

    which is smallest, though not 0, at :math:`\sigma(z) = x`. ``"mse"`` (Vincent et al.
    2010 for real-valued inputs): with ``prediction`` and ``target`` both normalised pixels,
    :math:`\mathcal{L}_2 = \frac{1}{N C H W} \sum (\hat x - x)^2`."""
    if prediction.shape != target.shape:
        raise ValueError(f"prediction {tuple(prediction.shape)} and target "
                         f"{tuple(target.shape)} differ in shape")
    if kind == "cross-entropy":
        return F.binary_cross_entropy_with_logits(prediction.float(), target.float())
    if kind == "mse":
        return F.mse_loss(prediction.float(), target.float())
    raise ValueError(f"unknown reconstruction loss {kind!r}; choose cross-entropy or mse")
