r"""DANN: domain-adversarial training (Ganin et al., "Domain-Adversarial Training of Neural
Networks", JMLR 2016; Ganin & Lempitsky, ICML 2015), for ``fewlabels adapt``.

The labeled stream is the source domain, the unlabeled stream the target domain. Source and
target images go through the backbone in one forward pass; the classifier learns the source
labels, and a domain discriminator (an MLP on the backbone's features) learns to tell source
(domain 0) from target (domain 1) through the gradient-reversal layer
(:mod:`fewlabels.models.gradient_reversal`), so the backbone is pushed towards features the
discriminator cannot separate:

.. math::

    \mathcal{L} = \frac{1}{B}\sum_{i \in S} \mathrm{CE}(C(F(x_i)), y_i)
        + w_d\, \mathcal{L}_d\big(D(R_{\lambda_p}(F(x)))\big), \qquad
    \lambda_p = \lambda_{\max}\Big(\frac{2}{1 + \exp(-10 p)} - 1\Big)

with :math:`\mathcal{L}_d` the binary cross-entropy of :func:`domain_classification_loss`
and :math:`p` the training progress (by steps or by the time budget), declared in
:meth:`DANN.schedules` and logged as ``reversal_coefficient``. :math:`R_\lambda` multiplies
only the gradient that reaches the backbone by :math:`-\lambda`; the discriminator learns from
the unscaled domain loss (the usual implementation of the reversal layer).

Choices, and how they differ from the paper:

- **Batch norm.** Source and target are concatenated into one batch (the common choice, e.g.
  the Transfer-Learning-Library's DANN), so batch norm normalises both domains with shared
  statistics and its running statistics (what the tested network uses) cover both. The
  paper's networks for small images had no batch norm.
- **Optimiser.** The paper anneals SGD (momentum 0.9) as :math:`\mu_p = \mu_0/(1 + 10p)^{0.75}`,
  :math:`\mu_0 = 0.01`, batches half source half target. Here every ``fewlabels adapt``
  method uses the same recipe (FixMatch's: SGD, Nesterov momentum 0.9, lr 0.03 for 64 source
  images, weight decay 5e-4, decayed as :math:`\cos(7\pi p/16)`), so source-only, DANN and
  the teacher differ only in their losses. Both decays end near the same fraction of the
  start (0.20 here, 0.17 in the paper) but the paper's falls faster early (0.26 at
  :math:`p = 0.5`, ours 0.77). ``--unlabeled-ratio 1`` (the default) keeps the paper's equal
  numbers of source and target images per batch.
- **Augmentation.** Both domains get the weak augmentation of every classifier method here
  (a translation by up to 1/8 of the side and a flip); the paper used none. ``--max-shift 0
  --flip false`` switches it off.
- **Discriminator.** ``--discriminator-hidden`` sizes its hidden layers (ReLU between them,
  no dropout); the default 1024, 1024 is the paper's discriminator for its larger-image
  experiments (the MNIST one had one layer of 100).
- **Evaluation** uses the moving average of the weights, like every classifier run here.

The target images' hidden labels only give the logged ``unlabeled_accuracy`` (the trained
classifier's accuracy on the target batch); ``domain_accuracy`` near 0.5 means the
discriminator can no longer tell the domains apart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fewlabels.engine.schedule import Schedule
from fewlabels.errors import UserError
from fewlabels.methods.base import Batch, DataInfo, StepInfo
from fewlabels.models.gradient_reversal import dann_lambda, reverse_gradient
from fewlabels.options import option
from fewlabels.semi.base import ClassifierMethod, SemiSupervisedConfig
from fewlabels.semi.registry import SEMI_METHODS

REVERSAL = "reversal_coefficient"


@dataclass
class DANNConfig(SemiSupervisedConfig):
    unlabeled_ratio: int = option(
        1, "target images per source image in a batch (DANN: equal halves, 1)")
    discriminator_hidden: tuple[int, ...] = option(
        (1024, 1024), "hidden layer sizes of the domain discriminator (an MLP on the "
        "backbone's features)")
    domain_weight: float = option(1.0, "weight of the domain loss")
    reversal_max: float = option(
        1.0, "lambda at the end of training: the reversal coefficient follows "
        "lambda_max * (2 / (1 + exp(-gamma p)) - 1)")
    reversal_gamma: float = option(10.0, "gamma of the reversal coefficient's schedule (DANN: 10)")


@dataclass(frozen=True)
class ReversalSchedule(Schedule):
    r"""DANN's schedule of the reversal coefficient as an engine schedule:
    :math:`\lambda_p = \texttt{start} \cdot (2 / (1 + \exp(-\gamma p)) - 1)` for the progress
    :math:`p` (see :func:`~fewlabels.models.gradient_reversal.dann_lambda`); no warm-up."""

    shape: str = "dann"
    gamma: float = 10.0

    def __post_init__(self) -> None:
        if not self.gamma > 0 or self.warmup_epochs:
            raise ValueError("the reversal schedule needs gamma > 0 and no warm-up")

    def value(self, step: int, progress: float, warmup_steps: int,
              warmup_end_progress: float) -> float:
        return self.start * dann_lambda(min(1.0, max(0.0, progress)), self.gamma)

    def to_dict(self) -> dict:
        return {**super().to_dict(), "gamma": self.gamma}


def domain_discriminator(in_features: int, hidden: tuple[int, ...]) -> nn.Sequential:
    """An MLP ``in_features -> hidden... -> 1`` with ReLU between layers: a domain logit."""
    layers: list[nn.Module] = []
    for size in hidden:
        layers += [nn.Linear(in_features, size), nn.ReLU(inplace=True)]
        in_features = size
    layers.append(nn.Linear(in_features, 1))
    return nn.Sequential(*layers)


def domain_classification_loss(source_logits: torch.Tensor,
                               target_logits: torch.Tensor) -> torch.Tensor:
    r"""DANN's domain loss (Ganin et al. 2016, eq. 11 with the logistic discriminator of
    eq. 10): the binary cross-entropy of the discriminator's logits, source images labelled
    0 and target images 1, averaged over all :math:`n + n'` images of both domains,

    .. math:: \mathcal{L}_d = -\frac{1}{n + n'}\Big(\sum_{i=1}^{n} \log(1 - \sigma(d_i))
              + \sum_{j=1}^{n'} \log \sigma(d_j)\Big)

    ``source_logits [n]``, ``target_logits [n']`` (computed in float32)."""
    logits = torch.cat([source_logits, target_logits]).float()
    domains = torch.cat([torch.zeros_like(source_logits), torch.ones_like(target_logits)]).float()
    return F.binary_cross_entropy_with_logits(logits, domains)


@SEMI_METHODS.register("dann", "domain-adversarial training through gradient reversal "
                               "(fewlabels adapt)")
class DANN(ClassifierMethod):
    """Source cross-entropy plus a domain discriminator behind a gradient-reversal layer."""

    name = "dann"
    domain_adaptation = True
    Config = DANNConfig
    paper = "Ganin et al., Domain-Adversarial Training of Neural Networks, JMLR 2016"

    def __init__(self, backbone: nn.Module, config: DANNConfig, data: DataInfo) -> None:
        super().__init__(backbone, config, data)
        if config.unlabeled_ratio < 1:
            raise UserError("dann needs target images in every batch: --unlabeled-ratio >= 1")
        if any(size < 1 for size in config.discriminator_hidden):
            raise UserError("--discriminator-hidden sizes must be positive")
        if config.domain_weight < 0 or config.reversal_max < 0 or not (
                math.isfinite(config.reversal_gamma) and config.reversal_gamma > 0):
            raise UserError("--domain-weight and --reversal-max must be >= 0 and "
                            "--reversal-gamma > 0")
        self.discriminator = domain_discriminator(int(backbone.feature_dim),
                                                  tuple(config.discriminator_hidden))

    def schedules(self) -> dict[str, Schedule]:
        return {REVERSAL: ReversalSchedule(self.config.reversal_max,
                                           gamma=self.config.reversal_gamma)}

    def make_views(self, batch: Batch, generator: torch.Generator) -> tuple:
        return (self.weak_views(batch.labeled, generator), batch.labels,
                self.weak_views(batch.unlabeled, generator), batch.hidden_labels)

    def training_loss(self, inputs: tuple, step: StepInfo) -> dict[str, torch.Tensor]:
        source, labels, target, hidden_labels = inputs
        features = self.backbone(torch.cat([source, target]))  # one batch-norm batch
        source_features, target_features = features.split([len(source), len(target)])
        numbers = self.supervised_loss(self.classifier(source_features), labels)
        domain_logits = self.discriminator(
            reverse_gradient(features, step.values[REVERSAL])).squeeze(1)
        source_domain, target_domain = domain_logits.split([len(source), len(target)])
        domain_loss = domain_classification_loss(source_domain, target_domain)
        numbers["loss"] = numbers["loss"] + self.config.domain_weight * domain_loss
        with torch.no_grad():
            right = torch.cat([source_domain < 0, target_domain >= 0])
            numbers |= {"domain_loss": domain_loss.detach(),
                        "domain_accuracy": right.float().mean()}
            if hidden_labels is not None:
                predicted = self.classifier(target_features.detach()).argmax(1)
                numbers["unlabeled_accuracy"] = (predicted == hidden_labels).float().mean()
        return numbers
