r"""Colorization as classification over quantised ab bins, with class rebalancing.

Zhang, Isola, Efros, "Colorful Image Colorization", ECCV 2016 (section 2.1 and 2.2). The ab
plane of CIE Lab is cut into ``Q`` bins (a grid of side 10 restricted to the sRGB gamut);
the network predicts, for every output pixel, a distribution :math:`\hat Z_{h,w} \in
\Delta^Q` over the bins, trained against the pixel's true ab value ``Y_{h,w}``:

- **soft encoding** (:func:`soft_encode`): the target :math:`Z_{h,w}` puts weight on the 5
  bins nearest to ``Y_{h,w}``, proportional to a Gaussian of the distance with
  :math:`\sigma = 5`, summing to 1;
- **class rebalancing** (:func:`rebalancing_weights`): the empirical distribution of bins
  over the training pixels, smoothed with a Gaussian of width :math:`\sigma`
  (:func:`smooth_distribution`), gives :math:`\tilde p`; each bin's weight is

  .. math::

      w \propto \Big((1 - \lambda)\, \tilde p + \frac{\lambda}{Q}\Big)^{-1}, \qquad
      \mathbb{E}_{\tilde p}[w] = \sum_q \tilde p_q w_q = 1,

  with :math:`\lambda = 0.5`, so that rare (saturated) colours are not drowned by the
  common desaturated ones;
- **the loss** (:func:`colorization_loss`, the paper's eq. 2 with eq. 3's
  :math:`v(Z_{h,w}) = w_{q^*}`, :math:`q^* = \arg\max_q Z_{h,w,q}`, the nearest bin):

  .. math::

      L = -\frac{1}{N H W} \sum_{n,h,w} w_{q^*_{n,h,w}} \sum_q Z_{n,h,w,q}
          \log \operatorname{softmax}(\hat z_{n,h,w})_q.

  (The paper sums over pixels; the mean here only rescales the learning rate.)

Usable without the engine: the bins and the prior are plain tensors. Typical step::

    logits = decoder(backbone(lightness))               # [N, Q, h, w]
    loss = colorization_loss(logits, ab_targets, bins, weights)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["colorization_loss", "rebalancing_weights", "smooth_distribution", "soft_encode"]


def soft_encode(ab: torch.Tensor, bins: torch.Tensor, neighbours: int = 5,
                sigma: float = 5.0) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Soft-encoded targets, sparse: for ab values ``[P, 2]`` and bin centres ``[Q, 2]``,
    the indices ``[P, k]`` of the ``k = neighbours`` nearest bins (nearest first) and their
    weights ``[P, k]``, :math:`\propto \exp(-d^2 / 2\sigma^2)` of the distance ``d``, summing
    to 1 over ``k`` (Zhang et al. 2016, section 2.1)."""
    if ab.ndim != 2 or ab.shape[1] != 2 or bins.ndim != 2 or bins.shape[1] != 2:
        raise ValueError(f"soft_encode wants ab [P, 2] and bins [Q, 2], got "
                         f"{tuple(ab.shape)} and {tuple(bins.shape)}")
    neighbours = min(neighbours, len(bins))
    squared = torch.cdist(ab.float(), bins.float()).square_()  # [P, Q]
    nearest_squared, indices = squared.topk(neighbours, dim=1, largest=False)  # sorted
    weights = torch.softmax(-nearest_squared / (2 * sigma**2), dim=1)  # [P, k]
    return indices, weights


def smooth_distribution(counts: torch.Tensor, bins: torch.Tensor,
                        sigma: float = 5.0) -> torch.Tensor:
    r"""The empirical bin distribution smoothed by a Gaussian of width :math:`\sigma` in the
    ab plane: :math:`\tilde p_q \propto \sum_{q'} p_{q'} \exp(-\|c_q - c_{q'}\|^2 /
    2\sigma^2) / \sum_{q''} \exp(-\|c_{q''} - c_{q'}\|^2 / 2\sigma^2)` (each bin's mass spread
    over its neighbours, then renormalised over the bins). ``counts`` ``[Q]`` (any scale)
    -> probabilities ``[Q]``; ``sigma = 0`` returns the normalised counts."""
    probabilities = counts.double() / counts.sum().clamp_min(1e-12)
    if sigma <= 0:
        return probabilities.to(counts.dtype if counts.is_floating_point() else torch.float32)
    squared = torch.cdist(bins.double(), bins.double()).square_()  # [Q, Q]
    kernel = torch.exp(-squared / (2 * sigma**2))
    kernel = kernel / kernel.sum(dim=1, keepdim=True)  # row q': where bin q' spreads to
    smoothed = probabilities @ kernel
    return (smoothed / smoothed.sum()).float()


def rebalancing_weights(prior: torch.Tensor, mix: float = 0.5) -> torch.Tensor:
    r"""Per-bin weights :math:`w \propto ((1 - \lambda) \tilde p + \lambda / Q)^{-1}` for the
    smoothed prior ``[Q]`` (summing to 1) and :math:`\lambda` = ``mix``, normalised so that
    :math:`\sum_q \tilde p_q w_q = 1` (Zhang et al. 2016, eq. 4). ``mix = 1`` gives weights
    of 1 (no rebalancing); ``mix = 0`` the inverse of the prior."""
    if not 0.0 <= mix <= 1.0:
        raise ValueError(f"mix must be in [0, 1], got {mix}")
    prior = prior.double()
    mixed = (1 - mix) * prior + mix / len(prior)
    weights = 1.0 / mixed.clamp_min(1e-12)
    return (weights / (prior * weights).sum()).float()


def colorization_loss(logits: torch.Tensor, ab: torch.Tensor, bins: torch.Tensor,
                      bin_weights: torch.Tensor | None = None, neighbours: int = 5,
                      sigma: float = 5.0) -> torch.Tensor:
    r"""The rebalanced cross-entropy against soft-encoded targets, averaged over pixels (see
    the module's docstring for the equation).

    Args:
        logits: ``[N, Q, H, W]`` scores over the bins at every output pixel.
        ab: ``[N, 2, H, W]`` the true a and b of those pixels.
        bins: ``[Q, 2]`` the bin centres in the ab plane.
        bin_weights: ``[Q]`` rebalancing weights (:func:`rebalancing_weights`); ``None``:
            every pixel weighs 1.
        neighbours, sigma: the soft encoding's (:func:`soft_encode`).
    """
    if logits.ndim != 4 or ab.ndim != 4 or ab.shape[1] != 2:
        raise ValueError(f"colorization_loss wants logits [N, Q, H, W] and ab [N, 2, H, W], "
                         f"got {tuple(logits.shape)} and {tuple(ab.shape)}")
    if logits.shape[1] != len(bins) or logits.shape[2:] != ab.shape[2:]:
        raise ValueError(f"logits {tuple(logits.shape)} do not match {len(bins)} bins and ab "
                         f"{tuple(ab.shape)}")
    pixels = ab.permute(0, 2, 3, 1).reshape(-1, 2)  # [P, 2], P = N H W
    indices, targets = soft_encode(pixels, bins, neighbours, sigma)  # [P, k] each
    # bins last and contiguous: the softmax runs along rows (much faster than along dim 1)
    scores = logits.float().permute(0, 2, 3, 1).reshape(len(pixels), -1)  # [P, Q]
    log_probabilities = F.log_softmax(scores, dim=1)
    cross_entropy = -(targets * log_probabilities.gather(1, indices)).sum(dim=1)  # [P]
    if bin_weights is not None:
        cross_entropy = cross_entropy * bin_weights[indices[:, 0]]  # the nearest bin's
    return cross_entropy.mean()
