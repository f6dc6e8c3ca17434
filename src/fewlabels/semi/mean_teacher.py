r"""Mean Teacher (Tarvainen & Valpola, "Mean teachers are better role models:
Weight-averaged consistency targets improve semi-supervised deep learning results", NeurIPS
2017).

The teacher is the exponential moving average of the student's weights,
:math:`\theta'_t = \alpha \theta'_{t-1} + (1 - \alpha) \theta_t`, and the student's softmax on
one noisy view of each unlabeled image should match the teacher's on another view (teacher
without gradient):

.. math::

    \mathcal{L} = \mathcal{L}_s + w(t)\, \frac{1}{\mu B} \sum_{b=1}^{\mu B}
        \frac{1}{K} \lVert p_\theta(y \mid \tilde x_b) - p_{\theta'}(y \mid \tilde x'_b)
        \rVert_2^2, \qquad w(t) = w_{\max}\, e^{-5 (1 - \min(1, t / T))^2}

(:func:`~fewlabels.losses.consistency.mse_consistency`, the official code's
``softmax_mse_loss`` divided by the batch).

The teacher IS the base's moving average of the weights (``self.average``, updated after
every optimiser step with decay ``--ema-decay``), which is also what the run evaluates, as in
the paper. Like the official code, the teacher runs in train mode (batch statistics of its
own batch); the running statistics it keeps are the student's, copied after every step.

How it differs from the paper, and why:

- The teacher's decay is the base moving average's, ``--ema-decay`` (default 0.999, the
  paper's value after its ramp-up; see :meth:`ClassifierMethod.after_optimizer_step`); the
  paper uses 0.99 during the ramp-up, then 0.999.
- The views are the weak augmentation (translation, flip) plus Gaussian noise of standard
  deviation 0.15 (``--input-noise``, the paper's ConvNet input noise); no dropout in our
  backbones.
- :math:`w_{\max} = 50` (``--unlabeled-weight``) and :math:`T = 0.4` (``--rampup-fraction``)
  as in USB's Mean Teacher (``ulb_loss_ratio: 50``, ``unsup_warm_up: 0.4``), whose batches
  are ours (a labeled batch and a separate unlabeled one); the paper tunes its maximum per
  experiment and ramps up over the first epochs. Not tuned here yet. FixMatch's optimiser,
  as for every classifier method here.
- The logged pseudo-label rate is 1 (every unlabeled image is used), its accuracy that of the
  teacher's arg-max.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fewlabels.losses.consistency import mse_consistency
from fewlabels.methods.base import StepInfo
from fewlabels.options import option
from fewlabels.semi.base import pseudo_label_numbers
from fewlabels.semi.pi_model import ConsistencyConfig, PiModel, TwoViews
from fewlabels.semi.registry import SEMI_METHODS


@dataclass
class MeanTeacherConfig(ConsistencyConfig):
    unlabeled_weight: float = option(
        50.0, "w_max: weight of the student-teacher consistency loss once ramped up")


@SEMI_METHODS.register("mean-teacher", "student matches its moving-average teacher on "
                       "another noisy view (Tarvainen & Valpola 2017)")
class MeanTeacher(PiModel):
    """Cross-entropy on the labeled views + w(t) · mean squared difference between the
    student's softmax on one view and the moving-average teacher's on another (the
    Pi-model's views, ramp-up and checks; the second view goes through the teacher)."""

    name = "mean-teacher"
    Config = MeanTeacherConfig
    paper = "Tarvainen & Valpola, NeurIPS 2017"

    @property
    def teacher(self) -> nn.Module:
        """The moving average of the student's weights (the base's ``average``)."""
        return self.average

    @staticmethod
    def unlabeled_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor
                       ) -> torch.Tensor:
        """Mean over images and classes of the squared difference between the student's
        softmax and the (detached) teacher's."""
        return mse_consistency(student_logits.float().softmax(dim=1),
                               teacher_logits.detach().float().softmax(dim=1))

    def training_loss(self, inputs: TwoViews, step: StepInfo) -> dict[str, torch.Tensor]:
        labeled_logits, student_logits = self.logits_of(inputs.labeled, inputs.first)
        with torch.no_grad():
            teacher_logits = self.teacher(inputs.second)
        losses = self.supervised_loss(labeled_logits, inputs.labels)
        unlabeled = self.unlabeled_loss(student_logits, teacher_logits)
        losses["loss"] = losses["loss"] + step.values["unlabeled_weight"] * unlabeled
        losses["unlabeled_loss"] = unlabeled.detach()
        every = torch.ones(len(teacher_logits), dtype=torch.bool, device=teacher_logits.device)
        return losses | pseudo_label_numbers(every, teacher_logits.argmax(dim=1),
                                             inputs.hidden_labels)
