r"""FlexMatch (Zhang, Wang, Hou, Wu, Wang, Okumura, Shinozaki, "FlexMatch: Boosting
Semi-Supervised Learning with Curriculum Pseudo Labeling", NeurIPS 2021).

FixMatch with one threshold per class that follows how well the class is learned
(curriculum pseudo-labelling): every unlabeled image keeps its latest prediction whose
confidence reached :math:`\tau`; the number of images so predicted as class :math:`c`,
normalised by the largest such count (or, during the warm-up, by the number of images not
yet predicted confidently), is the class's learning effect :math:`\beta(c)`, and

.. math:: \mathcal{T}(c) = \frac{\beta(c)}{2 - \beta(c)}\, \tau

(the convex mapping, eq. 11 with the warm-up). A class the network hardly predicts gets a
low threshold, so more of its pseudo-labels train; as it is learned its threshold rises to
:math:`\tau`. The loss is FixMatch's with :math:`\mathcal{T}(\hat q_b)` in place of
:math:`\tau` (:class:`~fewlabels.losses.semi.FlexMatchThresholds`). Each step masks with the
thresholds of the state before it, then records the confident predictions of the global
batch (gathered from every device with their image indices), so every device keeps the same
state (USB's order).

The state is one prediction per image of the unlabeled pool, the images ``Batch.indices``
count (all training images, or the ``--max-unlabeled`` pool). Defaults: FixMatch's
(:math:`\tau = 0.95`, :math:`\lambda_u = 1`, :math:`\mu = 7`, its optimiser), as in the
paper; every FixMatch option applies (soft pseudo-labels, distribution alignment).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fewlabels.distributed import gather_no_gradient
from fewlabels.losses.semi import FlexMatchThresholds
from fewlabels.methods.base import DataInfo, StepInfo, check_num_images
from fewlabels.options import option
from fewlabels.semi.fixmatch import FixMatch, FixMatchConfig, WeakStrongViews
from fewlabels.semi.registry import SEMI_METHODS


@dataclass
class FlexMatchConfig(FixMatchConfig):
    threshold_warmup: bool = option(
        True, "threshold warm-up: normalise the learning effect by the images not yet "
        "confidently predicted while they are the most (FlexMatch eq. 11)")


@SEMI_METHODS.register("flexmatch", "FixMatch with per-class thresholds from each class's "
                       "learning effect (Zhang et al. 2021)")
class FlexMatch(FixMatch):
    """FixMatch whose threshold of each class is mapped from the number of unlabeled images
    confidently predicted as that class."""

    name = "flexmatch"
    Config = FlexMatchConfig
    paper = "Zhang et al., NeurIPS 2021"

    def __init__(self, backbone: nn.Module, config: FlexMatchConfig, data: DataInfo) -> None:
        super().__init__(backbone, config, data)
        check_num_images(data, "FlexMatch keeps a prediction per unlabeled image and needs")
        self.thresholds = FlexMatchThresholds(data.num_images, data.num_classes,
                                              config.threshold, warmup=config.threshold_warmup)

    def class_thresholds(self, probabilities: torch.Tensor) -> torch.Tensor:
        return self.thresholds.class_thresholds()

    def update_state(self, probabilities: torch.Tensor, indices: torch.Tensor) -> None:
        self.thresholds.update(gather_no_gradient(probabilities), gather_no_gradient(indices))

    def training_loss(self, inputs: WeakStrongViews, step: StepInfo) -> dict[str, torch.Tensor]:
        losses = super().training_loss(inputs, step)
        with torch.no_grad():
            thresholds = self.thresholds.class_thresholds()
            losses["threshold_min"] = thresholds.min()
            losses["threshold_max"] = thresholds.max()
        return losses
