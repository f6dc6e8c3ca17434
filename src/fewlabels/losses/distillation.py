r"""Self-distillation objectives: BYOL, SimSiam and DINO, with DINO's centring and monitors.

A student is trained to predict a teacher's output for another view of the same image; the
teacher side never receives gradients (it is a momentum copy, or the student itself behind a
stop-gradient). Collapse to a constant output is what these methods must avoid: BYOL and
SimSiam by the predictor and the stop-gradient, DINO by centring and sharpening the teacher.
:func:`teacher_entropy` and :func:`dino_kl_divergence` make DINO's collapse visible.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from fewlabels.distributed import all_reduce_sum_no_gradient


def byol_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    r"""BYOL's regression loss, :math:`2 - 2\cos`, averaged over the batch.

    Grill et al., "Bootstrap Your Own Latent", NeurIPS 2020, eq. (2): with
    :math:`\bar q = q / \lVert q \rVert` the student's prediction and
    :math:`\bar z' = z' / \lVert z' \rVert` the target network's projection of the other view,

    .. math::

        \mathcal{L} = \frac{1}{n} \sum_i \lVert \bar q_i - \bar z'_i \rVert_2^2
                    = \frac{1}{n} \sum_i \big(2 - 2 \cos(q_i, z'_i)\big).

    The target is detached (the paper's stop-gradient). The symmetric loss of the paper is
    ``byol_loss(p1, z2) + byol_loss(p2, z1)``. Local to each device: DDP's averaged
    gradients are those of the global batch.

    Args:
        prediction: ``[n, D]`` the online network's prediction.
        target: ``[n, D]`` the target network's projection of the other view.

    Example::

        loss = byol_loss(predictor(projector(backbone(v1))), target_network(v2))
        loss = loss + byol_loss(predictor(projector(backbone(v2))), target_network(v1))
    """
    if prediction.shape != target.shape or prediction.dim() != 2:
        raise ValueError(f"expected prediction and target [n, D], got "
                         f"{tuple(prediction.shape)} and {tuple(target.shape)}")
    cosine = F.cosine_similarity(prediction, target.detach().to(prediction.dtype), dim=1)  # [n]
    return (2.0 - 2.0 * cosine).mean()


def simsiam_loss(prediction: torch.Tensor, projection: torch.Tensor) -> torch.Tensor:
    r"""SimSiam's negative cosine similarity with a stop-gradient on the projection.

    Chen & He, "Exploring Simple Siamese Representation Learning", CVPR 2021, eqs. (1)-(4):

    .. math::

        \mathcal{D}(p, z) = -\frac{1}{n} \sum_i
            \frac{p_i}{\lVert p_i \rVert_2} \cdot \frac{\mathrm{sg}(z_i)}{\lVert z_i \rVert_2}

    in :math:`[-1, 1]`. The paper's symmetric loss is
    ``0.5 * simsiam_loss(p1, z2) + 0.5 * simsiam_loss(p2, z1)``; without the stop-gradient
    it collapses (the paper's Fig. 2).

    Args:
        prediction: ``[n, D]`` the predictor's output for one view.
        projection: ``[n, D]`` the projector's output for the other view (detached here).

    Example::

        z1, z2 = projector(backbone(v1)), projector(backbone(v2))
        loss = 0.5 * simsiam_loss(predictor(z1), z2) + 0.5 * simsiam_loss(predictor(z2), z1)
    """
    if prediction.shape != projection.shape or prediction.dim() != 2:
        raise ValueError(f"expected prediction and projection [n, D], got "
                         f"{tuple(prediction.shape)} and {tuple(projection.shape)}")
    projection = projection.detach().to(prediction.dtype)
    return -F.cosine_similarity(prediction, projection, dim=1).mean()


# DINO ---------------------------------------------------------------------------------------


def _views(rows: int, images: int, name: str) -> int:
    if images < 1 or rows % images != 0:
        raise ValueError(f"{name} has {rows} rows, not a multiple of the {images} images")
    return rows // images


def _teacher_probabilities(
    teacher_logits: torch.Tensor, center: torch.Tensor, teacher_temperature: float
) -> torch.Tensor:
    """softmax((t - c) / tau_t) in float32, no gradient: ``[rows, K]``."""
    centred = teacher_logits.detach().float() - center.detach().float().reshape(1, -1)
    return F.softmax(centred / teacher_temperature, dim=-1)


def _dino_cross_entropies(
    student_logits: torch.Tensor,
    teacher_probabilities: torch.Tensor,
    student_temperature: float,
    num_global_views: int,
) -> torch.Tensor:
    """``[G, V]``: entry (g, v) is the mean over images of H(teacher view g, student view v)."""
    if student_logits.dim() != 2 or student_logits.shape[1] != teacher_probabilities.shape[1]:
        raise ValueError(f"expected student logits [V*n, K] and teacher logits [G*n, K], got "
                         f"{tuple(student_logits.shape)} and "
                         f"{tuple(teacher_probabilities.shape)}")
    if num_global_views < 1:
        raise ValueError(f"num_global_views must be at least 1, got {num_global_views}")
    images = _views(teacher_probabilities.shape[0], num_global_views, "teacher_logits")
    views = _views(student_logits.shape[0], images, "student_logits")
    if views < num_global_views or views < 2:
        raise ValueError(f"the student needs the {num_global_views} global views and at least "
                         f"one other view, got {views} views of {images} images")
    classes = student_logits.shape[1]
    # Long sums over n*K: in float32 even under autocast.
    with torch.autocast(device_type=student_logits.device.type, enabled=False):
        log_student = F.log_softmax(student_logits.float() / student_temperature, dim=-1)
        teacher = teacher_probabilities.view(num_global_views, images * classes)  # [G, n*K]
        # One matmul gives every (teacher view, student view) pair: [G, n*K] @ [n*K, V].
        products = teacher @ log_student.view(views, images * classes).T  # [G, V]
    return -products / images


def _pairs_mask(num_global_views: int, views: int, device: torch.device) -> torch.Tensor:
    """True for the (teacher view g, student view v) pairs with g != v: ``[G, V]``."""
    return ~torch.eye(num_global_views, views, dtype=torch.bool, device=device)


def dino_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    center: torch.Tensor,
    student_temperature: float = 0.1,
    teacher_temperature: float = 0.04,
    num_global_views: int = 2,
) -> torch.Tensor:
    r"""DINO's cross-entropy between the centred, sharpened teacher and the student.

    Caron et al., "Emerging Properties in Self-Supervised Vision Transformers", ICCV 2021,
    eq. (3) and Algorithm 1. With :math:`P_t = \mathrm{softmax}((g_t - c)/\tau_t)` (no
    gradient) on the :math:`G` global views and :math:`P_s = \mathrm{softmax}(g_s / \tau_s)`
    on all :math:`V` views (global first),

    .. math::

        \mathcal{L} = \frac{1}{|\mathcal{P}|} \sum_{(g, v) \in \mathcal{P}}
            \frac{1}{n} \sum_{i=1}^{n} -\sum_k P_t^{(g)}(x_i)_k \log P_s^{(v)}(x_i)_k,
        \qquad \mathcal{P} = \{(g, v) : g < G,\ v < V,\ v \ne g\},

    exactly the official loop over pairs (:math:`|\mathcal{P}| = G (V - 1)`), as one matmul.
    Local to each device (DDP's averaged gradients are those of the global batch); the
    centre is shared (:func:`updated_center`). The paper warms :math:`\tau_t` up from 0.04 to
    0.07 and updates the centre with momentum 0.9 after each step.

    Args:
        student_logits: ``[V*n, K]`` view-major: row ``v*n + i`` is view v of image i; the
            first ``num_global_views * n`` rows are the global views.
        teacher_logits: ``[G*n, K]`` the teacher's logits of the global views, same order.
        center: ``[K]`` or ``[1, K]``, the running centre of the teacher logits.
        student_temperature: :math:`\tau_s` (0.1).
        teacher_temperature: :math:`\tau_t` (0.04 to 0.07).
        num_global_views: :math:`G` (2).

    Example::

        loss = dino_loss(student_logits, teacher_logits, self.center, 0.1, 0.04, 2)
        self.center.copy_(updated_center(self.center, teacher_logits, momentum=0.9))
    """
    teacher = _teacher_probabilities(teacher_logits, center, teacher_temperature)
    cross = _dino_cross_entropies(student_logits, teacher, student_temperature,
                                  num_global_views)  # [G, V]
    return cross[_pairs_mask(*cross.shape, device=cross.device)].mean()


@torch.no_grad()
def updated_center(
    center: torch.Tensor, teacher_logits: torch.Tensor, momentum: float = 0.9
) -> torch.Tensor:
    r"""DINO's centre update, :math:`c \leftarrow m c + (1 - m) \frac{1}{B} \sum_i g_t(x_i)`.

    Caron et al. 2021, eq. (4): the mean is over every row of the teacher's logits (all
    global views) of the GLOBAL batch of :math:`B` rows, all-reduced across devices (a sum
    and a count, so unequal local batches are fine), without gradient. Returns a new tensor
    shaped like ``center``; the caller keeps it in a buffer (``center.copy_(...)``) after the
    loss.

    Example::

        loss = dino_loss(student_logits, teacher_logits, self.center)
        self.center.copy_(updated_center(self.center, teacher_logits, momentum=0.9))
    """
    logits = teacher_logits.detach().float()  # [G*n, K]
    if logits.dim() != 2 or logits.shape[1] != center.numel():
        raise ValueError(f"expected teacher logits [rows, {center.numel()}], got "
                         f"{tuple(teacher_logits.shape)}")
    count = torch.full((1,), float(logits.shape[0]), device=logits.device)
    totals = all_reduce_sum_no_gradient(torch.cat([logits.sum(dim=0), count]))  # [K + 1]
    batch_center = (totals[:-1] / totals[-1]).reshape(center.shape).to(center.dtype)
    return center.detach() * momentum + batch_center * (1.0 - momentum)


class TeacherEntropy(NamedTuple):
    """Two entropies (nats) of the teacher's distributions, for DINO's collapse monitor.

    ``of_mean``: :math:`H(\\bar P_t)` of the batch-mean distribution, ``log K`` when the
    outputs spread over all K dimensions, near 0 when one dimension dominates for every
    image (collapse to one dimension). ``mean``: the mean per-image :math:`H(P_t(x_i))`,
    near ``log K`` when every output is uniform (collapse to uniform), low for a healthy
    sharpened teacher. Healthy training keeps ``of_mean`` high and ``mean`` low.
    """

    of_mean: torch.Tensor
    mean: torch.Tensor


def _entropy(probabilities: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of each row ``[..., K]`` -> ``[...]``; 0 log 0 = 0."""
    return -(probabilities * probabilities.clamp_min(1e-30).log()).sum(dim=-1)


@torch.no_grad()
def teacher_entropy(
    teacher_logits: torch.Tensor, center: torch.Tensor, teacher_temperature: float = 0.04
) -> TeacherEntropy:
    """Entropy of the mean teacher distribution and mean entropy of the per-image ones.

    The teacher's distributions are DINO's ``softmax((t - c) / tau_t)``; both numbers are
    over the global batch (all-reduced), so every device logs the same values. DINO's
    Fig. 7 follows the teacher's entropy and the teacher-student KL
    (:func:`dino_kl_divergence`) to tell collapse from healthy training.

    Example::

        monitor = teacher_entropy(teacher_logits, self.center, 0.04)
        metrics = {"teacher_entropy_of_mean": monitor.of_mean, "teacher_entropy": monitor.mean}
    """
    teacher = _teacher_probabilities(teacher_logits, center, teacher_temperature)  # [B, K]
    rows = torch.full((1,), float(teacher.shape[0]), device=teacher.device)
    totals = all_reduce_sum_no_gradient(
        torch.cat([teacher.sum(dim=0), _entropy(teacher).sum().view(1), rows]))  # [K + 2]
    count = totals[-1]
    return TeacherEntropy(of_mean=_entropy(totals[:-2] / count), mean=totals[-2] / count)


@torch.no_grad()
def dino_kl_divergence(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    center: torch.Tensor,
    student_temperature: float = 0.1,
    teacher_temperature: float = 0.04,
    num_global_views: int = 2,
) -> torch.Tensor:
    r"""Mean KL(teacher || student) over the pairs and images of :func:`dino_loss`.

    :math:`\mathrm{KL} = H(P_t, P_s) - H(P_t)`: the loss minus the teacher's mean entropy
    (each teacher view appears in the same number of pairs). Zero when the student matches
    the teacher; DINO's Fig. 7 shows it falling to 0 in a collapse, where the student has
    nothing left to learn. Local to the device, no gradient.

    Example::

        kl = dino_kl_divergence(student_logits, teacher_logits, self.center)
    """
    teacher = _teacher_probabilities(teacher_logits, center, teacher_temperature)
    cross = _dino_cross_entropies(student_logits, teacher, student_temperature,
                                  num_global_views)  # [G, V]
    mask = _pairs_mask(*cross.shape, device=cross.device)
    teacher_entropies = _entropy(teacher).view(num_global_views, -1).mean(dim=1)  # [G]
    return (cross - teacher_entropies[:, None])[mask].mean()
