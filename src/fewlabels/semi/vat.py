r"""Virtual adversarial training (Miyato, Maeda, Koyama & Ishii, "Virtual Adversarial
Training: A Regularization Method for Supervised and Semi-Supervised Learning", TPAMI 2018).

The prediction should not change within a ball of radius :math:`\epsilon` around every
image, measured in the direction that changes it most. That direction :math:`r_{\mathrm{adv}}`
is found by one power iteration from a random direction (a finite difference of size
:math:`\xi`), and the loss is

.. math::

    \mathcal{L} = \mathcal{L}_s + \alpha\, \frac{1}{N} \sum_{x}
        \mathrm{KL}\big(p(y \mid x) \,\|\, p(y \mid x + r_{\mathrm{adv}})\big)
        \; \big[ + \beta\, \frac{1}{\mu B} \sum_{u} \mathrm{H}(p(y \mid u)) \big]

over the labeled and the unlabeled images of the batch (:math:`N` of them; the paper's
:math:`\mathcal{D}_l \cup \mathcal{D}_{ul}`), the clean prediction :math:`p(y \mid x)` held
fixed (:func:`~fewlabels.losses.consistency.vat_loss`). The bracketed entropy term, over the
unlabeled images :math:`u`, is VAT+EntMin, the paper's best variant
(``--entropy-weight 1``; default 0, plain VAT).

The perturbation passes (the power iteration and the perturbed forward) normalise with the
batch's statistics but do not move batch norm's running statistics (as the official code's
``update_batch_stats=False``; lyakaap/VAT-pytorch#12): only the clean pass, the method's
ordinary forward, does. Under DDP the engine calls the wrapped method once; inside
``training_loss`` ``self`` is the unwrapped module, so the extra passes go through the plain
network (``self.logits``) and its batch-norm layers, never through DDP's forward again.

Choices, and how they differ from the paper:

- :math:`\epsilon = 2` (``--epsilon``), in units of the normalised image the network sees,
  for 28 px grey images. The paper tunes :math:`\epsilon` per dataset on a validation set.
  2.0 is the default of cleverhans' VAT perturbation (``vatm``), which cites the MNIST
  experiments of Miyato et al.; the official TensorFlow code's default 8.0 and USB's 6 are for
  32 px colour images (SVHN, CIFAR-10, with ZCA whitening in the paper). Not tuned here yet.
- :math:`\xi = 10^{-6}`, one power iteration and :math:`\alpha = 1` (``--xi``,
  ``--power-iterations``, ``--unlabeled-weight``): the paper's.
- Weakly augmented views (translation, flip), as the paper's CIFAR-10 runs with augmentation;
  FixMatch's optimiser instead of the paper's Adam, as for every classifier method here.
- The logged pseudo-label rate is 1 (every image is regularised), its accuracy that of the
  clean arg-max on the unlabeled images.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fewlabels.errors import UserError
from fewlabels.losses.consistency import entropy_loss, vat_loss
from fewlabels.methods.base import Batch, DataInfo, StepInfo
from fewlabels.options import option
from fewlabels.semi.base import ClassifierMethod, SemiSupervisedConfig, pseudo_label_numbers
from fewlabels.semi.pseudo_label import WeakViews, weak_views_of
from fewlabels.semi.registry import SEMI_METHODS


@dataclass
class VATConfig(SemiSupervisedConfig):
    unlabeled_weight: float = option(
        1.0, "alpha: weight of the virtual adversarial loss (Miyato et al.: 1)")
    epsilon: float = option(
        2.0, "norm of the adversarial perturbation of each image, in normalised pixel units "
        "(Miyato et al. tune it per dataset; 2.0: cleverhans' default for MNIST-like data)")
    xi: float = option(1e-6, "finite-difference step of the power iteration (Miyato et al.)")
    power_iterations: int = option(1, "power iterations for the adversarial direction")
    entropy_weight: float = option(
        0.0, "weight of the entropy of the predictions (1: VAT+EntMin, the paper's best; "
        "0: plain VAT)")


@SEMI_METHODS.register("vat", "prediction kept within a ball of radius epsilon in the "
                       "adversarial direction (Miyato et al. 2018)")
class VAT(ClassifierMethod):
    """Cross-entropy on the labeled views + α · KL between the clean and the virtually
    adversarial predictions of every image (+ β · their entropy for VAT+EntMin)."""

    name = "vat"
    Config = VATConfig
    paper = "Miyato et al., TPAMI 2018"

    def __init__(self, backbone: nn.Module, config: VATConfig, data: DataInfo) -> None:
        super().__init__(backbone, config, data)
        if config.epsilon <= 0 or config.xi <= 0:
            raise UserError(f"--epsilon and --xi must be > 0, got {config.epsilon} and "
                            f"{config.xi}")
        if config.power_iterations < 1:
            raise UserError(f"--power-iterations must be >= 1, got {config.power_iterations}")
        if config.entropy_weight < 0:
            raise UserError(f"--entropy-weight must be >= 0, got {config.entropy_weight}")
        if config.unlabeled_ratio < 1:
            raise UserError(f"{self.name} needs unlabeled images; give --unlabeled-ratio >= 1")

    def make_views(self, batch: Batch, generator: torch.Generator) -> WeakViews:
        return weak_views_of(self, batch, generator)

    def unlabeled_loss(self, images: torch.Tensor, logits: torch.Tensor,
                       generator: torch.Generator | None) -> torch.Tensor:
        """The mean KL(p(x) ‖ p(x + r_adv)) over ``images`` with clean ``logits``; the
        perturbation passes leave batch norm's running statistics as they were."""
        return vat_loss(self.logits, images, logits, epsilon=self.config.epsilon,
                        xi=self.config.xi, power_iterations=self.config.power_iterations,
                        generator=generator, batch_norm_owner=self)

    def training_loss(self, inputs: WeakViews, step: StepInfo) -> dict[str, torch.Tensor]:
        images = torch.cat([inputs.labeled, inputs.unlabeled])
        logits = self.logits(images)  # the clean pass: batch norm's statistics move here only
        labeled_logits, unlabeled_logits = logits.split([len(inputs.labeled),
                                                         len(inputs.unlabeled)])
        losses = self.supervised_loss(labeled_logits, inputs.labels)
        unlabeled = self.unlabeled_loss(images, logits, step.generator)
        losses["loss"] = losses["loss"] + self.config.unlabeled_weight * unlabeled
        losses["unlabeled_loss"] = unlabeled.detach()
        if self.config.entropy_weight > 0:
            entropy = entropy_loss(unlabeled_logits)  # the official code's ul batch
            losses["loss"] = losses["loss"] + self.config.entropy_weight * entropy
            losses["entropy"] = entropy.detach()
        every = torch.ones(len(unlabeled_logits), dtype=torch.bool,
                           device=unlabeled_logits.device)
        return losses | pseudo_label_numbers(every, unlabeled_logits.detach().argmax(dim=1),
                                             inputs.hidden_labels)
