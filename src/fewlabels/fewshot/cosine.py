"""The cosine-similarity classifier of Baseline++ (Chen et al., "A Closer Look at Few-shot
Classification", ICLR 2019), and the supervised classifier method that trains it on the
base classes with the engine.

Its logits are scaled cosines between a feature and one weight vector per class, so a class
is a direction, not a length: classes with many or bright images cannot win by weight norm,
which Chen et al. found reduces intra-class variation and helps on novel classes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fewlabels.methods.base import DataInfo
from fewlabels.models.momentum import copy_as_teacher
from fewlabels.options import option
from fewlabels.semi.base import ClassifierConfig, ClassifierNetwork
from fewlabels.semi.supervised import Supervised


def cosine_logits(features: torch.Tensor, weight: torch.Tensor, scale: float) -> torch.Tensor:
    """Baseline++'s logits (Chen et al. 2019, Sec. 3.2):

        logit_c(x) = s · cos(f(x), w_c) = s · f(x)·w_c / (‖f(x)‖ ‖w_c‖),

    for features ``[..., M, D]`` and class weights ``[..., C, D]`` (batched over leading
    dimensions, e.g. episodes) -> ``[..., M, C]``. The fixed scale ``s`` sets how peaked the
    softmax can get: cosines lie in [−1, 1]."""
    return scale * F.normalize(features, dim=-1) @ F.normalize(weight, dim=-1).transpose(-1, -2)


class CosineClassifier(nn.Module):
    """A classifier whose logits are :func:`cosine_logits` of its weights ``[C, D]``."""

    def __init__(self, in_features: int, classes: int, scale: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, in_features) / in_features ** 0.5)
        self.scale = scale

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return cosine_logits(features, self.weight, self.scale)


@dataclass
class CosineClassifierConfig(ClassifierConfig):
    """The supervised method's options and the cosine classifier's scale."""

    cosine_scale: float = option(10.0, "scale s of the cosine logits s·cos(w, f)")


class CosineSupervised(Supervised):
    """Supervised training of a backbone with a cosine classifier (Baseline++'s base-class
    training). Not registered as a `fewlabels semi` method: few-shot Baseline++ passes the
    class to :func:`fewlabels.semi.training.train_classifier`."""

    name = "baseline++"
    Config = CosineClassifierConfig
    paper = "Baseline++ of Chen et al., ICLR 2019"

    def __init__(self, backbone: nn.Module, config: CosineClassifierConfig,
                 data: DataInfo) -> None:
        super().__init__(backbone, config, data)
        # swap the base class's linear classifier for the cosine one, and average that
        self.classifier = CosineClassifier(int(backbone.feature_dim), data.num_classes,
                                           config.cosine_scale)
        self.average = copy_as_teacher(ClassifierNetwork(backbone, self.classifier))
