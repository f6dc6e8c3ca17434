r"""Consistency and pseudo-label objectives of semi-supervised learning, engine-free.

Each is a plain function of logits or probabilities, usable in any training loop:
:func:`sharpen` and :func:`mixup` (MixMatch), :func:`confidence_mask` and
:func:`fixmatch_unlabeled_loss` (Pseudo-Label, FixMatch, FlexMatch, FreeMatch),
:func:`soft_consistency_loss` (UDA), :func:`entropy_loss` (entropy minimisation),
:func:`mse_consistency` (Pi-model, Mean Teacher, MixMatch's unlabeled term) and
:func:`vat_perturbation` / :func:`vat_loss` (VAT) with
:func:`frozen_batch_norm_statistics`. The adaptive thresholds and distribution alignment,
which keep state, live in :mod:`fewlabels.losses.semi`.

Conventions: every unlabeled loss is a mean over *all* unlabeled samples of the batch (a
masked sample contributes 0), as the papers write it (FixMatch eq. 4 divides by
:math:`\mu B`); targets computed from the model are detached inside the loss.

Typical FixMatch step::

    weak_probabilities = logits_weak.softmax(dim=1)
    loss_u, mask = fixmatch_unlabeled_loss(logits_strong, weak_probabilities, threshold=0.95)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = [
    "MixUp",
    "confidence_mask",
    "entropy_loss",
    "fixmatch_unlabeled_loss",
    "frozen_batch_norm_statistics",
    "mixup",
    "mse_consistency",
    "sample_beta",
    "sample_gamma",
    "sharpen",
    "soft_consistency_loss",
    "vat_loss",
    "vat_perturbation",
]


def sharpen(probabilities: Tensor, temperature: float) -> Tensor:
    r"""MixMatch's sharpening (Berthelot et al., "MixMatch", NeurIPS 2019, eq. 7):

    .. math:: \operatorname{Sharpen}(p, T)_i = \frac{p_i^{1/T}}{\sum_{j} p_j^{1/T}}

    over the last dimension. ``T = 1`` returns ``p``; ``T -> 0`` tends to the one-hot of the
    argmax. Computed as ``softmax(log p / T)`` so that small ``T`` does not underflow.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return torch.softmax(probabilities.clamp_min(1e-30).log() / temperature, dim=-1)


# Beta sampling from a torch.Generator. ---------------------------------------------------


def _draw(kind: str, count: int, generator: torch.Generator | None) -> Tensor:
    device = generator.device if generator is not None else torch.device("cpu")
    if kind == "normal":
        return torch.randn(count, generator=generator, device=device, dtype=torch.float64)
    return torch.rand(count, generator=generator, device=device, dtype=torch.float64)


def sample_gamma(concentration: float, count: int,
                 generator: torch.Generator | None = None) -> Tensor:
    r"""``count`` draws of Gamma(concentration, 1), float64, reproducible from ``generator``
    (torch's own Gamma and Beta take no generator).

    Marsaglia & Tsang (2000) rejection for shape ``a >= 1``: with :math:`d = a - 1/3`,
    :math:`c = 1/\sqrt{9d}`, :math:`x \sim N(0, 1)`, :math:`v = (1 + cx)^3`, accept
    :math:`dv` when :math:`\log u < x^2/2 + d - dv + d \log v`. For ``a < 1``,
    :math:`G_a = G_{a+1} U^{1/a}`. Rejected entries are redrawn together (a few rounds, no
    loop over samples); the numbers drawn depend only on the generator's state.
    """
    if concentration <= 0:
        raise ValueError(f"Gamma concentration must be > 0, got {concentration}")
    boost = concentration < 1.0
    shape = concentration + 1.0 if boost else concentration
    d = shape - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    result = torch.empty(count, dtype=torch.float64)
    pending = torch.arange(count)
    while pending.numel() > 0:
        x = _draw("normal", pending.numel(), generator).cpu()
        u = _draw("uniform", pending.numel(), generator).cpu()
        v = (1.0 + c * x) ** 3
        positive = v > 0
        log_v = torch.where(positive, v, torch.ones_like(v)).log()
        accepted = positive & (u.log() < 0.5 * x * x + d - d * v + d * log_v)
        result[pending[accepted]] = d * v[accepted]
        pending = pending[~accepted]
    if boost:
        result = result * _draw("uniform", count, generator).cpu().pow(1.0 / concentration)
    return result


def sample_beta(alpha: float, beta: float, count: int,
                generator: torch.Generator | None = None) -> Tensor:
    r"""``count`` draws of Beta(alpha, beta) as :math:`G_\alpha / (G_\alpha + G_\beta)`
    with two independent Gammas from :func:`sample_gamma` (float64, on the CPU)."""
    first = sample_gamma(alpha, count, generator)
    second = sample_gamma(beta, count, generator)
    total = first + second
    # Both Gammas can underflow to 0 for tiny concentrations: call that a fair coin's 1/2.
    return torch.where(total > 0, first / total.clamp_min(1e-300), torch.full_like(total, 0.5))


class MixUp(NamedTuple):
    """What :func:`mixup` returns: the mixed batch, the mixed targets, the weight
    :math:`\\lambda'` of each row ``[N]`` and the permutation the partners came from ``[N]``."""

    inputs: Tensor
    targets: Tensor
    weights: Tensor
    permutation: Tensor


def mixup(inputs: Tensor, targets: Tensor, alpha: float,
          generator: torch.Generator | None = None, *, per_sample: bool = True) -> MixUp:
    r"""MixMatch's MixUp (Berthelot et al. 2019, eqs. 8-11; Zhang et al., "mixup", ICLR 2018):

    .. math::

        \lambda \sim \operatorname{Beta}(\alpha, \alpha), \quad
        \lambda' = \max(\lambda, 1 - \lambda), \quad
        x' = \lambda' x_i + (1 - \lambda') x_{\pi(i)}, \quad
        p' = \lambda' p_i + (1 - \lambda') p_{\pi(i)}

    with :math:`\pi` a random permutation of the batch, so every row keeps most of itself
    (:math:`\lambda' \ge 1/2`). ``per_sample=True`` draws one :math:`\lambda` per row, as
    the official code does (``libml/layers.py`` ``MixMode.augment_pair`` samples Beta with
    shape ``[batch, 1, 1, 1]``); ``per_sample=False`` draws one for the batch, as the paper's
    Algorithm 1 reads and as popular PyTorch ports do. For MixMatch, pass the labeled and
    unlabeled rows concatenated (the official ``xxy.yxy`` mode shuffles over all of them) and
    split the result. ``targets`` are soft ``[N, K]``; ``inputs`` any ``[N, ...]``. The
    draws (the :math:`\lambda`, then the permutation) come from ``generator``.
    """
    if alpha <= 0:
        raise ValueError(f"MixUp alpha must be > 0, got {alpha}")
    if inputs.shape[0] != targets.shape[0]:
        raise ValueError(f"{inputs.shape[0]} inputs but {targets.shape[0]} targets")
    count = inputs.shape[0]
    lam = sample_beta(alpha, alpha, count if per_sample else 1, generator)
    lam = torch.maximum(lam, 1.0 - lam).expand(count)  # [N]
    device = generator.device if generator is not None else torch.device("cpu")
    permutation = torch.randperm(count, generator=generator, device=device).to(inputs.device)
    weights = lam.to(device=inputs.device, dtype=inputs.dtype)  # [N]
    shape = (count,) + (1,) * (inputs.dim() - 1)
    mixed_inputs = torch.lerp(inputs[permutation], inputs, weights.view(shape))
    target_weights = lam.to(device=targets.device, dtype=targets.dtype).view(count, 1)
    mixed_targets = torch.lerp(targets[permutation], targets, target_weights)
    return MixUp(mixed_inputs, mixed_targets, weights, permutation)


# Confidence-masked pseudo-labels. --------------------------------------------------------


def confidence_mask(probabilities: Tensor,
                    threshold: float | Tensor) -> tuple[Tensor, Tensor, Tensor]:
    r"""The confidence, hard pseudo-label and mask of each row of ``probabilities [B, K]``:

    .. math:: \hat{q}_b = \max_c q_{b,c}, \quad \hat{y}_b = \arg\max_c q_{b,c}, \quad
              m_b = \mathbb{1}[\hat{q}_b \ge \tau_{\hat{y}_b}]

    ``threshold`` is one number or one per class ``[K]`` (FlexMatch, FreeMatch). A
    confidence exactly at the threshold counts (``>=``, as FixMatch's and USB's code do).
    Returns ``(confidence [B], pseudo_labels [B], mask [B] bool)``, all without gradient.
    """
    probabilities = probabilities.detach()
    confidence, pseudo_labels = probabilities.max(dim=1)
    if isinstance(threshold, Tensor) and threshold.dim() > 0:
        if threshold.shape != probabilities.shape[1:]:
            raise ValueError(f"per-class thresholds must be [{probabilities.shape[1]}], "
                             f"got {tuple(threshold.shape)}")
        threshold = threshold.to(probabilities.device)[pseudo_labels]  # [B]
    return confidence, pseudo_labels, confidence >= threshold


def fixmatch_unlabeled_loss(strong_logits: Tensor, weak_probabilities: Tensor,
                            threshold: float | Tensor = 0.95) -> tuple[Tensor, Tensor]:
    r"""FixMatch's unlabeled loss (Sohn et al., "FixMatch", NeurIPS 2020, eq. 4):

    .. math::

        \ell_u = \frac{1}{\mu B} \sum_{b=1}^{\mu B}
            \mathbb{1}[\max q_b \ge \tau]\; \mathrm{H}(\hat{q}_b, p(y \mid \mathcal{A}(u_b)))

    with :math:`q_b` the (detached) prediction on the weak view, :math:`\hat{q}_b` its
    one-hot argmax and :math:`\mathcal{A}(u_b)` the strong view. The sum is divided by the
    number of unlabeled samples, not by the number of confident ones. Also Pseudo-Label
    (Lee 2013) with ``strong_logits`` = the same view's logits, and FlexMatch / FreeMatch
    with per-class thresholds ``[K]`` (see :func:`confidence_mask`).
    Returns ``(loss, mask [B] bool)``.
    """
    _, pseudo_labels, mask = confidence_mask(weak_probabilities, threshold)
    per_sample = F.cross_entropy(strong_logits.float(), pseudo_labels, reduction="none")  # [B]
    return (per_sample * mask).mean(), mask


def soft_consistency_loss(strong_logits: Tensor, weak_logits: Tensor,
                          temperature: float = 0.4,
                          threshold: float = 0.8) -> tuple[Tensor, Tensor]:
    r"""UDA's unlabeled loss (Xie et al., "Unsupervised Data Augmentation for Consistency
    Training", NeurIPS 2020, eq. 2 with confidence masking and sharpening, section 3.2):

    .. math::

        \ell_u = \frac{1}{B} \sum_{b=1}^{B} \mathbb{1}[\max_c q_{b,c} \ge \beta]\;
            \mathrm{KL}\!\left(\operatorname{Sharpen}(q_b, T) \,\|\,
            p(y \mid \hat{u}_b)\right)

    with :math:`q_b = \operatorname{softmax}(\text{weak logits})` detached (the mask uses
    the unsharpened confidence, as UDA's code does), :math:`\hat{u}_b` the strong view and
    :math:`\operatorname{Sharpen}(q, T) = \operatorname{softmax}(z/T)`. Defaults: UDA's
    CIFAR-10 values ``T = 0.4``, ``beta = 0.8``. Returns ``(loss, mask [B] bool)``.
    """
    weak_logits = weak_logits.detach().float()
    _, _, mask = confidence_mask(weak_logits.softmax(dim=1), threshold)
    target_log = F.log_softmax(weak_logits / temperature, dim=1)  # [B, K]
    predicted_log = F.log_softmax(strong_logits.float(), dim=1)
    per_sample = (target_log.exp() * (target_log - predicted_log)).sum(dim=1)  # [B]
    return (per_sample * mask).mean(), mask


def entropy_loss(logits: Tensor) -> Tensor:
    r"""Entropy minimisation (Grandvalet & Bengio, "Semi-supervised Learning by Entropy
    Minimization", NeurIPS 2004/2005): the mean entropy of the predictions,

    .. math:: \ell = -\frac{1}{B} \sum_{b=1}^{B} \sum_{c} p_{b,c} \log p_{b,c},
              \quad p_b = \operatorname{softmax}(z_b)

    computed from log-softmax (exact for saturated logits). Gradient flows into ``logits``.
    """
    log_p = F.log_softmax(logits.float(), dim=1)
    return -(log_p.exp() * log_p).sum(dim=1).mean()


def mse_consistency(probabilities: Tensor, targets: Tensor) -> Tensor:
    r"""Squared difference of two predicted distributions ``[B, K]``, averaged over the
    batch and the classes:

    .. math:: \ell = \frac{1}{B} \sum_{b=1}^{B} \frac{1}{K} \lVert p_b - q_b \rVert_2^2

    The normalisation of the Pi-model (Laine & Aila, "Temporal Ensembling for
    Semi-Supervised Learning", ICLR 2017, Algorithm 1: :math:`\frac{1}{C}\lVert z - \tilde
    z\rVert^2` averaged over the batch), of Mean Teacher (Tarvainen & Valpola, NeurIPS 2017:
    the official ``softmax_mse_loss`` sums over classes and divides by the number of
    classes, then by the batch) and of MixMatch's :math:`\mathcal{L}_U` (eq. 5, ``1/(L|U'|)``).
    Pass softmax outputs; ``targets`` is not detached here (detach a Mean Teacher's teacher,
    or leave both branches differentiable for the Pi-model).
    """
    if probabilities.shape != targets.shape:
        raise ValueError(f"shapes differ: {tuple(probabilities.shape)} vs {tuple(targets.shape)}")
    return (probabilities.float() - targets.float()).pow(2).mean()


# Virtual adversarial training. -----------------------------------------------------------


@contextmanager
def frozen_batch_norm_statistics(module: nn.Module) -> Iterator[None]:
    """Inside the block, forward passes of ``module`` in train mode still normalise with
    the batch's statistics but leave every batch-norm layer's ``running_mean``,
    ``running_var`` and ``num_batches_tracked`` as they were.

    VAT's perturbation passes must not move the running statistics (lyakaap/VAT-pytorch#12);
    Miyato et al.'s code runs them with ``update_batch_stats=False``, i.e. train-mode
    normalisation without the update, which this reproduces (eval mode would change the
    normalisation itself). How: each layer's ``momentum`` is set to 0 (also when it is
    ``None``, the cumulative average), so the update ``(1 - 0) r + 0 m`` rewrites the same
    values, and ``num_batches_tracked``, which still counts, is copied back on exit (also on
    an exception). Restoring the statistics by copying them back instead would bump their
    autograd version and break the backward of a pass made inside the block. Covers every
    subclass of ``_BatchNorm`` (``SyncBatchNorm``, ``GlobalBatchNorm``, ``SplitBatchNorm``).
    """
    saved = []
    for layer in module.modules():
        if isinstance(layer, _BatchNorm) and layer.track_running_stats:
            count = layer.num_batches_tracked
            saved.append((layer, layer.momentum, None if count is None else count.clone()))
            layer.momentum = 0.0
    try:
        yield
    finally:
        for layer, momentum, count in saved:
            layer.momentum = momentum
            if count is not None:
                with torch.no_grad():
                    layer.num_batches_tracked.copy_(count)


def _upcast(tensor: Tensor) -> Tensor:
    """Half and bfloat16 to float32 for a loss; float32 and float64 as they are."""
    return tensor if tensor.dtype == torch.float64 else tensor.float()


def _kl_from_logits(target_probabilities: Tensor, logits: Tensor) -> Tensor:
    """Per-sample KL(target || softmax(logits)) ``[B]`` for a detached target."""
    log_q = F.log_softmax(_upcast(logits), dim=1)
    log_p = target_probabilities.clamp_min(1e-30).log()
    return (target_probabilities * (log_p - log_q)).sum(dim=1)


def _unit_per_sample(direction: Tensor) -> Tensor:
    """Scale each sample of ``direction [B, ...]`` to unit L2 norm (over all its elements),
    first dividing by its largest magnitude so that tiny gradients do not underflow."""
    flat = direction.flatten(1)
    flat = flat / flat.abs().amax(dim=1, keepdim=True).clamp_min(1e-30)
    flat = flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-30)
    return flat.view_as(direction)


def vat_perturbation(forward: Callable[[Tensor], Tensor], images: Tensor, logits: Tensor, *,
                     epsilon: float, xi: float = 1e-6, power_iterations: int = 1,
                     generator: torch.Generator | None = None) -> Tensor:
    r"""The virtual adversarial perturbation of VAT (Miyato, Maeda, Koyama, Ishii, "Virtual
    Adversarial Training", TPAMI 2018, eqs. 13-14): one (or more) power iterations with a
    finite difference of size :math:`\xi` from a random Gaussian direction :math:`d`,

    .. math::

        d \leftarrow \frac{g}{\lVert g \rVert_2}, \quad
        g = \nabla_{r}\, \mathrm{KL}\big(p(y \mid x) \,\|\, p(y \mid x + r)\big)
            \Big|_{r = \xi d}, \qquad
        r_{\mathrm{adv}} = \epsilon\, d

    per image, so :math:`\lVert r_{\mathrm{adv}}\rVert_2 = \epsilon` for every image (the
    norm over all its pixels and channels). ``forward`` maps images to logits; ``logits``
    are the clean logits (detached here). The gradient is taken with ``torch.autograd.grad``
    with respect to :math:`r` only, so no parameter's ``.grad`` changes. Call it inside
    :func:`frozen_batch_norm_statistics` (as :func:`vat_loss` does) so that the passes do
    not move batch-norm running statistics. Returns the detached ``r_adv`` (images' shape).
    """
    if power_iterations < 1:
        raise ValueError(f"power_iterations must be >= 1, got {power_iterations}")
    target = _upcast(logits.detach()).softmax(dim=1)
    source = generator.device if generator is not None else images.device
    direction = torch.randn(images.shape, generator=generator, device=source,
                            dtype=images.dtype).to(images.device)
    for _ in range(power_iterations):
        probe = (xi * _unit_per_sample(direction)).requires_grad_(True)
        divergence = _kl_from_logits(target, forward(images.detach() + probe)).sum()
        (direction,) = torch.autograd.grad(divergence, probe)
    return (epsilon * _unit_per_sample(direction)).detach()


def vat_loss(forward: Callable[[Tensor], Tensor], images: Tensor, logits: Tensor, *,
             epsilon: float, xi: float = 1e-6, power_iterations: int = 1,
             generator: torch.Generator | None = None,
             batch_norm_owner: nn.Module | None = None) -> Tensor:
    r"""VAT's local distributional smoothness loss (Miyato et al. 2018, eq. 5):

    .. math::

        \ell = \frac{1}{B} \sum_{b=1}^{B}
            \mathrm{KL}\big(p(y \mid x_b) \,\|\, p(y \mid x_b + r_{\mathrm{adv}, b})\big)

    with the clean prediction detached and :math:`r_{\mathrm{adv}}` from
    :func:`vat_perturbation`. Gradient flows into the model through the perturbed pass
    only. Every perturbed pass (the power iterations and the final one) runs inside
    :func:`frozen_batch_norm_statistics` of ``batch_norm_owner``, which defaults to
    ``forward`` when that is an ``nn.Module`` and must be given otherwise.
    """
    owner = batch_norm_owner if batch_norm_owner is not None else forward
    if not isinstance(owner, nn.Module):
        raise ValueError("vat_loss needs the module whose batch-norm statistics to keep: "
                         "pass batch_norm_owner=model when forward is not an nn.Module")
    with frozen_batch_norm_statistics(owner):
        perturbation = vat_perturbation(forward, images, logits, epsilon=epsilon, xi=xi,
                                        power_iterations=power_iterations,
                                        generator=generator)
        adversarial_logits = forward(images.detach() + perturbation)
    target = _upcast(logits.detach()).softmax(dim=1)
    return _kl_from_logits(target, adversarial_logits).mean()
