r"""The Pi-model (Laine & Aila, "Temporal Ensembling for Semi-Supervised Learning", ICLR 2017;
Sajjadi, Javanmardi & Tasdizen, "Regularization With Stochastic Transformations and
Perturbations for Deep Semi-Supervised Learning", NeurIPS 2016).

Two stochastic views of every unlabeled image should get the same prediction: the squared
difference of their softmax outputs, averaged over the classes and the images, with a weight
ramped up along a Gaussian curve,

.. math::

    \mathcal{L} = \mathcal{L}_s + w(t)\, \frac{1}{\mu B} \sum_{b=1}^{\mu B}
        \frac{1}{K} \lVert p(y \mid \tilde x_b) - p(y \mid \tilde x'_b) \rVert_2^2, \qquad
    w(t) = w_{\max}\, e^{-5 (1 - \min(1, t / T))^2}

(:func:`~fewlabels.losses.consistency.mse_consistency`, Algorithm 1 of Laine & Aila), with
:math:`t` the fraction of training done and :math:`T` the ramp-up's share of it. Both
branches carry gradient, as in the paper (neither is a fixed target).

How it differs from the paper, and why:

- The views are the weak augmentation (translation by up to 1/8 of the side, flip) plus
  Gaussian noise of standard deviation 0.15 on the normalised image (``--input-noise``, the
  paper's); our backbones have no dropout, the paper's third source of noise.
- :math:`w_{\max} = 10` (``--unlabeled-weight``) and :math:`T = 0.4` (``--rampup-fraction``)
  as in USB's Pi-model (``ulb_loss_ratio: 10``, ``unsup_warm_up: 0.4``; its ramp is linear),
  whose batches are ours: a labeled batch and a separate unlabeled batch, each averaged on
  its own. The paper's maximum (100, scaled by the labeled fraction in its code) belongs to
  its mixed batches; its ramp is 80 of 300 epochs (0.27). At :math:`t = 0` the weight is
  :math:`w_{\max} e^{-5}`, as the formula gives. Not tuned here yet.
- FixMatch's optimiser (SGD with Nesterov momentum, cos(7πt/16) decay) instead of the
  paper's Adam, as for every classifier method here. Labeled and unlabeled views go through
  one forward pass, so batch norm sees them together.
- The logged pseudo-label rate is 1 (every unlabeled image is used), its accuracy that of the
  first view's arg-max.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from fewlabels.errors import UserError
from fewlabels.losses.consistency import mse_consistency
from fewlabels.methods.base import Batch, DataInfo, StepInfo
from fewlabels.options import option
from fewlabels.semi.base import ClassifierMethod, SemiSupervisedConfig, pseudo_label_numbers
from fewlabels.semi.registry import SEMI_METHODS


@dataclass(frozen=True)
class GaussianRamp:
    """Laine & Aila's ramp-up: ``peak · exp(-5 (1 - min(1, progress / length))²)``, so
    ``peak · e^-5`` at the start and ``peak`` from progress ``length`` on (``length`` 0:
    ``peak`` throughout). Evaluated by the engine every step like a
    :class:`~fewlabels.engine.schedule.Schedule`."""

    peak: float
    length: float

    def warmup_steps(self, steps_per_epoch: int) -> int:
        return 0

    def value(self, step: int, progress: float, warmup_steps: int = 0,
              warmup_end_progress: float = 0.0) -> float:
        if self.length <= 0 or progress >= self.length:
            return self.peak
        remaining = 1.0 - max(0.0, progress) / self.length
        return self.peak * math.exp(-5.0 * remaining * remaining)

    def to_dict(self) -> dict[str, Any]:
        return {"shape": "gaussian_ramp", "peak": self.peak, "length": self.length}


class TwoViews(NamedTuple):
    """A step's inputs for methods with two views of every unlabeled image: the labeled views
    and their labels, the first and second views of the unlabeled images, and their hidden
    labels (logged only)."""

    labeled: torch.Tensor  # [B, C, H, W], normalised
    labels: torch.Tensor  # [B]
    first: torch.Tensor  # [μB, C, H, W]
    second: torch.Tensor  # [μB, C, H, W]
    hidden_labels: torch.Tensor | None  # [μB] or None


def noisy_weak_views(method: ClassifierMethod, images: torch.Tensor,
                     generator: torch.Generator, noise: float) -> torch.Tensor:
    """The weak augmentation of uint8 ``images``, normalised, plus Gaussian noise of
    standard deviation ``noise`` (normalised units), drawn from ``generator``."""
    views = method.weak_views(images, generator)
    if noise > 0:
        draws = torch.randn(views.shape, generator=generator, device=generator.device)
        views = views + noise * draws.to(device=views.device, dtype=views.dtype)
    return views


def two_views_of(method: ClassifierMethod, batch: Batch, generator: torch.Generator,
                 noise: float) -> TwoViews:
    """One noisy weak view of every labeled image and two of every unlabeled one."""
    if batch.unlabeled is None:
        raise UserError(f"{method.name} needs unlabeled images; give --unlabeled-ratio >= 1")
    return TwoViews(noisy_weak_views(method, batch.labeled, generator, noise), batch.labels,
                    noisy_weak_views(method, batch.unlabeled, generator, noise),
                    noisy_weak_views(method, batch.unlabeled, generator, noise),
                    batch.hidden_labels)


@dataclass
class ConsistencyConfig(SemiSupervisedConfig):
    """Options of the methods whose unlabeled loss is a ramped-up consistency between two
    noisy views (Pi-model, Mean Teacher)."""

    unlabeled_weight: float = option(
        10.0, "w_max: weight of the consistency loss once ramped up")
    rampup_fraction: float = option(
        0.4, "fraction of training over which the weight rises to w_max along "
        "exp(-5(1-t)^2) (0: no ramp-up)")
    input_noise: float = option(
        0.15, "standard deviation of Gaussian noise added to every view, in normalised "
        "pixel units (Laine & Aila, Tarvainen & Valpola: 0.15; 0: none)")


def check_consistency_config(method: ClassifierMethod, config: ConsistencyConfig) -> None:
    if not 0.0 <= config.rampup_fraction <= 1.0:
        raise UserError(f"--rampup-fraction must be in [0, 1], got {config.rampup_fraction}")
    if config.input_noise < 0:
        raise UserError(f"--input-noise must be >= 0, got {config.input_noise}")
    if config.unlabeled_ratio < 1:
        raise UserError(f"{method.name} needs unlabeled images; give --unlabeled-ratio >= 1")


@SEMI_METHODS.register("pi-model", "squared difference of the predictions on two noisy "
                       "views, weight ramped up (Laine & Aila 2017)")
class PiModel(ClassifierMethod):
    """Cross-entropy on the labeled views + w(t) · mean squared difference of the softmax
    outputs on two noisy views of each unlabeled image."""

    name = "pi-model"
    Config = ConsistencyConfig
    paper = "Laine & Aila, ICLR 2017; Sajjadi et al., NeurIPS 2016"

    def __init__(self, backbone: torch.nn.Module, config: ConsistencyConfig,
                 data: DataInfo) -> None:
        super().__init__(backbone, config, data)
        check_consistency_config(self, config)

    def schedules(self) -> dict[str, GaussianRamp]:
        return {"unlabeled_weight": GaussianRamp(self.config.unlabeled_weight,
                                                 self.config.rampup_fraction)}

    def make_views(self, batch: Batch, generator: torch.Generator) -> TwoViews:
        return two_views_of(self, batch, generator, self.config.input_noise)

    @staticmethod
    def unlabeled_loss(first_logits: torch.Tensor, second_logits: torch.Tensor
                       ) -> torch.Tensor:
        """Mean over images and classes of the squared difference of the two softmax
        outputs; gradient flows into both."""
        return mse_consistency(first_logits.float().softmax(dim=1),
                               second_logits.float().softmax(dim=1))

    def training_loss(self, inputs: TwoViews, step: StepInfo) -> dict[str, torch.Tensor]:
        labeled_logits, first_logits, second_logits = self.logits_of(
            inputs.labeled, inputs.first, inputs.second)
        losses = self.supervised_loss(labeled_logits, inputs.labels)
        unlabeled = self.unlabeled_loss(first_logits, second_logits)
        losses["loss"] = losses["loss"] + step.values["unlabeled_weight"] * unlabeled
        losses["unlabeled_loss"] = unlabeled.detach()
        every = torch.ones(len(first_logits), dtype=torch.bool, device=first_logits.device)
        return losses | pseudo_label_numbers(every, first_logits.detach().argmax(dim=1),
                                             inputs.hidden_labels)
