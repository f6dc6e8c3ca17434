"""Supervised training on the labeled images only: the baseline every semi-supervised method
must beat, and with ``--init`` fine-tuning of a pretrained backbone (``fewlabels finetune``).

Cross-entropy on weakly augmented labeled images (a translation by up to 1/8 of the side and
a flip), FixMatch's optimiser (SGD, Nesterov momentum, lr 0.03 for 64 images, weight decay
5e-4, the cos(7πt/16) decay), evaluated with the moving average of the weights, so that it
differs from the semi-supervised methods only in what they add.
"""

from __future__ import annotations

import torch

from fewlabels.methods.base import Batch, StepInfo
from fewlabels.semi.base import ClassifierConfig, ClassifierMethod
from fewlabels.semi.registry import SEMI_METHODS


@SEMI_METHODS.register("supervised", "the labeled images only (with --init: fine-tuning)")
class Supervised(ClassifierMethod):
    """Cross-entropy on the labeled stream; no unlabeled stream."""

    name = "supervised"
    Config = ClassifierConfig
    paper = "the supervised baseline of Oliver et al., NeurIPS 2018"

    def make_views(self, batch: Batch, generator: torch.Generator
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.weak_views(batch.labeled, generator), batch.labels

    def training_loss(self, inputs: tuple[torch.Tensor, torch.Tensor], step: StepInfo
                      ) -> dict[str, torch.Tensor]:
        images, labels = inputs
        return self.supervised_loss(self.logits(images), labels)
