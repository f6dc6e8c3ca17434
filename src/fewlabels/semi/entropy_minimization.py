r"""Entropy minimisation (Grandvalet & Bengio, "Semi-supervised Learning by Entropy
Minimization", NeurIPS 2004).

The unlabeled images should fall far from the decision boundaries, so their predictions
should be confident: the supervised cross-entropy plus :math:`\lambda` times the mean entropy
of the predictions on the unlabeled images (their weak views),

.. math::

    \mathcal{L} = \mathcal{L}_s - \lambda\, \frac{1}{\mu B} \sum_{b=1}^{\mu B}
        \sum_{c} p_{b,c} \log p_{b,c}

(:func:`~fewlabels.losses.consistency.entropy_loss`; the gradient flows through both factors
of :math:`p \log p`).

How it differs from the paper, and why: the paper fits :math:`\lambda` by cross-validation on
small problems (logistic regression, a few features); there is no value for deep networks.
The default :math:`\lambda = 0.1` (``--unlabeled-weight``) is of the order of the entropy
weight USB gives VAT+EntMin (``ent_loss_ratio`` 0.06); not tuned here yet. It stays constant,
as in the paper. The views are weakly augmented (translation
and flip) and the optimiser is FixMatch's, as for every classifier method here. The logged
pseudo-label rate is 1 (no threshold: every unlabeled prediction is pushed), and its accuracy
that of the arg-max on the unlabeled images.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fewlabels.errors import UserError
from fewlabels.losses.consistency import entropy_loss
from fewlabels.methods.base import Batch, DataInfo, StepInfo
from fewlabels.options import option
from fewlabels.semi.base import ClassifierMethod, SemiSupervisedConfig, pseudo_label_numbers
from fewlabels.semi.pseudo_label import WeakViews, weak_views_of
from fewlabels.semi.registry import SEMI_METHODS


@dataclass
class EntropyMinimizationConfig(SemiSupervisedConfig):
    unlabeled_weight: float = option(
        0.1, "lambda: weight of the mean entropy of the unlabeled predictions")


@SEMI_METHODS.register("entropy-minimization", "cross-entropy + lambda x entropy of the "
                       "unlabeled predictions (Grandvalet & Bengio 2004)")
class EntropyMinimization(ClassifierMethod):
    """Cross-entropy on the labeled views + λ · mean entropy of the unlabeled views'
    predictions."""

    name = "entropy-minimization"
    Config = EntropyMinimizationConfig
    paper = "Grandvalet & Bengio, NeurIPS 2004"

    def __init__(self, backbone: torch.nn.Module, config: EntropyMinimizationConfig,
                 data: DataInfo) -> None:
        super().__init__(backbone, config, data)
        if config.unlabeled_ratio < 1:
            raise UserError(f"{self.name} needs unlabeled images; give --unlabeled-ratio >= 1")

    def make_views(self, batch: Batch, generator: torch.Generator) -> WeakViews:
        return weak_views_of(self, batch, generator)

    @staticmethod
    def unlabeled_loss(logits: torch.Tensor) -> torch.Tensor:
        """The mean entropy of ``softmax(logits [U, K])``."""
        return entropy_loss(logits)

    def training_loss(self, inputs: WeakViews, step: StepInfo) -> dict[str, torch.Tensor]:
        labeled_logits, unlabeled_logits = self.logits_of(inputs.labeled, inputs.unlabeled)
        losses = self.supervised_loss(labeled_logits, inputs.labels)
        unlabeled = self.unlabeled_loss(unlabeled_logits)
        losses["loss"] = losses["loss"] + self.config.unlabeled_weight * unlabeled
        losses["unlabeled_loss"] = unlabeled.detach()
        every = torch.ones(len(unlabeled_logits), dtype=torch.bool,
                           device=unlabeled_logits.device)
        return losses | pseudo_label_numbers(every, unlabeled_logits.detach().argmax(dim=1),
                                             inputs.hidden_labels)
