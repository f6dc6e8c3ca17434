"""Classifier methods, one file each, registered by name in ``SEMI_METHODS``: supervised
training and fine-tuning, and the semi-supervised methods, all on the engine's training loop
with a labeled and an unlabeled stream (:mod:`fewlabels.engine.streams`)."""

from fewlabels.semi import supervised  # noqa: F401
from fewlabels.semi.base import (
    ClassifierConfig,
    ClassifierMethod,
    ClassifierNetwork,
    SemiSupervisedConfig,
    pseudo_label_numbers,
)
from fewlabels.semi.registry import SEMI_METHODS

__all__ = ["SEMI_METHODS", "ClassifierConfig", "ClassifierMethod", "ClassifierNetwork",
           "SemiSupervisedConfig", "pseudo_label_numbers"]
