r"""Instance discrimination with a memory bank: NPID.

Wu, Xiong, Yu, Lin, "Unsupervised Feature Learning via Non-Parametric Instance
Discrimination", CVPR 2018. Every image is its own class; the class weights are the memory
bank's rows :math:`v_j` (unit vectors, ``MemoryBank``), updated after each step from the
current features. With :math:`f_i` the current L2-normalised feature of image :math:`i`:

.. math::

    P(i \mid f_i) = \frac{\exp(v_i^\top f_i / \tau)}{Z_i},
    \qquad Z_i = \sum_{j=1}^{N} \exp(v_j^\top f_i / \tau)

(eq. 2). :func:`npid_softmax_loss` computes :math:`Z_i` exactly over the whole bank;
:func:`npid_nce_loss` is the paper's noise-contrastive estimate (Section 3.2), with a
constant normaliser :math:`Z` estimated once (:func:`estimate_nce_normalizer`). Both can add
the proximal term :math:`\lambda \lVert f_i - v_i \rVert_2^2` of Section 3.3 (the current
feature :math:`v_i^{(t)} = f_i` held near its bank entry :math:`v_i^{(t-1)}`), which damps
the oscillation that comes from seeing each "class" once per epoch.

The paper's settings: :math:`\tau = 0.07`, :math:`m = 4096` noise samples, bank momentum 0.5.
For the proximal weight the paper shows (Fig. 3) that :math:`\lambda > 0` smooths and
speeds up training; the default here is 0 (off), so a method chooses and records its value.

Typical step of a method (the bank is a ``fewlabels.models.memory.MemoryBank``)::

    loss = npid_nce_loss(features, indices, memory.bank, normalizer=self.normalizer)
    memory.update_(indices, features, momentum=0.5)  # after the loss
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from fewlabels.distributed import all_reduce_mean_no_gradient


def _check(features: torch.Tensor, indices: torch.Tensor, bank: torch.Tensor) -> None:
    if features.dim() != 2 or bank.dim() != 2 or features.shape[1] != bank.shape[1]:
        raise ValueError(f"expected features [n, D] and bank [N, D], got "
                         f"{tuple(features.shape)} and {tuple(bank.shape)}")
    if indices.shape != (features.shape[0],) or indices.is_floating_point():
        raise ValueError(f"expected integer indices [{features.shape[0]}], got "
                         f"{indices.dtype} {tuple(indices.shape)}")


def _proximal(features: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
    """Mean over images of ``||f_i - v_i||^2`` (``previous`` carries no gradient)."""
    return (features - previous).square().sum(dim=1).mean()


def npid_softmax_loss(
    features: torch.Tensor,
    indices: torch.Tensor,
    bank: torch.Tensor,
    temperature: float = 0.07,
    proximal_weight: float = 0.0,
) -> torch.Tensor:
    r"""NPID's full non-parametric softmax over the memory bank (Wu et al. 2018, eq. 2).

    .. math::

        \mathcal{L} = \frac{1}{n} \sum_{i} \Big[ -\log
            \frac{\exp(v_{y_i}^\top f_i / \tau)}{\sum_{j=1}^{N} \exp(v_j^\top f_i / \tau)}
            + \lambda \lVert f_i - v_{y_i} \rVert_2^2 \Big]

    with :math:`y_i` = ``indices[i]``, :math:`f_i` the normalised features and :math:`v` the
    bank (no gradient). Exact, and costs one ``[n, N]`` product per step: right for the
    datasets of tens of thousands of images that fit this library's CPU path. The bank is
    copied, so the caller may update it before ``backward()``.

    Args:
        features: ``[n, D]`` embeddings (normalised here).
        indices: ``[n]`` each image's row in the bank (its dataset index).
        bank: ``[N, D]`` unit rows, e.g. ``MemoryBank.bank``.
        temperature: :math:`\tau` (0.07 in the paper).
        proximal_weight: :math:`\lambda`; 0 turns the proximal term off.

    Example::

        loss = npid_softmax_loss(features, indices, memory.bank, temperature=0.07)
        memory.update_(indices, features, momentum=0.5)  # after the loss
    """
    _check(features, indices, bank)
    features = F.normalize(features, dim=1)  # [n, D]
    weights = bank.detach().to(dtype=features.dtype, copy=True)  # [N, D], safe to update
    logits = features @ weights.T / temperature  # [n, N]
    loss = F.cross_entropy(logits, indices.to(features.device))
    if proximal_weight > 0:
        loss = loss + proximal_weight * _proximal(features, weights[indices])
    return loss


def _draw_noise(
    count: int, num_negatives: int, bank_size: int, generator: torch.Generator | None,
    device: torch.device,
) -> torch.Tensor:
    """``[count, num_negatives]`` bank rows drawn uniformly (with replacement), on ``device``."""
    source = generator.device if generator is not None else device
    return torch.randint(bank_size, (count, num_negatives), generator=generator,
                         device=source).to(device)


def _candidate_scores(
    features: torch.Tensor, bank: torch.Tensor, candidates: torch.Tensor
) -> torch.Tensor:
    """``v_{c_ik}^T f_i`` for every image i and candidate row c_ik: ``[n, k]``.

    Gathers the candidates' rows (``[n, k, D]``, what NPID's code does, O(1) in the bank
    size) unless one ``[n, N]`` product over the whole bank takes less memory, as it does for
    banks of tens of thousands of rows. Both give the same numbers.
    """
    count, width = candidates.shape
    size, dim = bank.shape
    if count * width * dim <= size * dim + count * size:
        rows = bank[candidates]  # [n, k, D]
        return torch.bmm(rows, features.unsqueeze(2)).squeeze(2)  # [n, k]
    all_scores = features @ bank.to(copy=True).T  # [n, N]; the copy may be updated in place
    return all_scores.gather(1, candidates)  # [n, k]


def npid_nce_loss(
    features: torch.Tensor,
    indices: torch.Tensor,
    bank: torch.Tensor,
    temperature: float = 0.07,
    num_negatives: int = 4096,
    normalizer: float | torch.Tensor = 1.0,
    generator: torch.Generator | None = None,
    proximal_weight: float = 0.0,
) -> torch.Tensor:
    r"""NPID's noise-contrastive estimation (Wu et al. 2018, Sections 3.2 and 3.3).

    Each image's true row is told apart from :math:`m` noise rows drawn uniformly from the
    bank (:math:`P_n = 1/N`, with replacement, possibly including the true row, as in NCE).
    With :math:`P(j \mid f) = \exp(v_j^\top f / \tau) / Z` and the constant normaliser
    :math:`Z`, the probability that row :math:`j` came from the data is
    :math:`h(j, f) = P(j \mid f) / (P(j \mid f) + m P_n)`, and

    .. math::

        \mathcal{L} = \frac{1}{n} \sum_{i} \Big[ -\log h(y_i, f_i)
            - \sum_{k=1}^{m} \log\big(1 - h(j_{ik}, f_i)\big)
            + \lambda \lVert f_i - v_{y_i} \rVert_2^2 \Big],

    the per-image sum over noise samples as in the paper's objective (its second term is
    :math:`m` times an expectation over :math:`P_n`). Computed stably in log space:
    :math:`-\log h = \mathrm{softplus}(\log(m P_n) - \log P)` and
    :math:`-\log(1 - h) = \mathrm{softplus}(\log P - \log(m P_n))`.

    **The normaliser** is a constant, estimated once from the first batch
    (:func:`estimate_nce_normalizer`) as the paper does; the caller keeps it in a
    registered buffer, so checkpoints hold it and a resumed run keeps the same value::

        self.register_buffer("normalizer", torch.zeros(()))  # 0 = not estimated yet
        ...
        if self.normalizer <= 0:
            self.normalizer.copy_(estimate_nce_normalizer(features, memory.bank))

    Args:
        features: ``[n, D]`` embeddings (normalised here).
        indices: ``[n]`` each image's row in the bank.
        bank: ``[N, D]`` unit rows (no gradient), e.g. ``MemoryBank.bank``.
        temperature: :math:`\tau` (0.07 in the paper).
        num_negatives: :math:`m` (4096 in the paper).
        normalizer: :math:`Z`, a positive number or 0-dim tensor.
        generator: where the noise rows are drawn (seeded by the engine per step).
        proximal_weight: :math:`\lambda`; 0 turns the proximal term off.

    Example::

        loss = npid_nce_loss(features, indices, memory.bank, normalizer=self.normalizer)
        memory.update_(indices, features, momentum=0.5)  # after the loss
    """
    _check(features, indices, bank)
    if num_negatives < 1:
        raise ValueError(f"num_negatives must be at least 1, got {num_negatives}")
    features = F.normalize(features, dim=1)  # [n, D]
    indices = indices.to(features.device)
    size = bank.shape[0]
    weights = bank.detach().to(features.dtype)  # [N, D]
    noise = _draw_noise(features.shape[0], num_negatives, size, generator, features.device)
    candidates = torch.cat([indices[:, None], noise], dim=1)  # [n, 1 + m], true row first
    log_z = torch.as_tensor(normalizer, dtype=torch.float32, device=features.device).log()
    scores = _candidate_scores(features, weights, candidates).float()  # [n, 1 + m]
    log_p = scores / temperature - log_z  # log P(j | f_i), in float32 under autocast too
    log_noise = math.log(num_negatives / size)  # log(m P_n)
    data_term = F.softplus(log_noise - log_p[:, 0])  # [n]: -log h(y_i, f_i)
    noise_term = F.softplus(log_p[:, 1:] - log_noise).sum(dim=1)  # [n]: -sum log(1 - h)
    loss = (data_term + noise_term).mean()
    if proximal_weight > 0:
        loss = loss + proximal_weight * _proximal(features, weights[indices])
    return loss


@torch.no_grad()
def estimate_nce_normalizer(
    features: torch.Tensor,
    bank: torch.Tensor,
    temperature: float = 0.07,
    num_negatives: int = 4096,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""The constant :math:`Z` of :func:`npid_nce_loss`, by Monte Carlo on one batch.

    The paper's Monte Carlo estimate (Section 3.2):
    :math:`Z \simeq Z_i \simeq N\, \mathbb{E}_j[\exp(v_j^\top f_i/\tau)]
    = \frac{N}{m} \sum_{k=1}^{m} \exp(v_{j_k}^\top f_i / \tau)` with :math:`j_k` uniform
    over the bank, averaged over the batch's images and then over devices (so every device
    uses the same :math:`Z`). Call it once, on the first batch, and keep the result (see
    :func:`npid_nce_loss`). Returns a 0-dim float32 tensor on the features' device.

    Example::

        if self.normalizer <= 0:
            self.normalizer.copy_(estimate_nce_normalizer(features, memory.bank))
    """
    if features.dim() != 2 or bank.dim() != 2 or features.shape[1] != bank.shape[1]:
        raise ValueError(f"expected features [n, D] and bank [N, D], got "
                         f"{tuple(features.shape)} and {tuple(bank.shape)}")
    features = F.normalize(features.detach().float(), dim=1)  # [n, D]
    size = bank.shape[0]
    noise = _draw_noise(features.shape[0], num_negatives, size, generator, features.device)
    scores = _candidate_scores(features, bank.detach().float(), noise)  # [n, m]
    z = (scores / temperature).exp().mean() * size
    return all_reduce_mean_no_gradient(z)
