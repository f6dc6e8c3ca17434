"""Classifier methods, one file each, registered by name in ``SEMI_METHODS``: supervised
training and fine-tuning, and the semi-supervised methods, all on the engine's training loop
with a labeled and an unlabeled stream (:mod:`fewlabels.engine.streams`)."""

from fewlabels.semi import (
    adaptive_teacher,  # noqa: F401
    co_training,  # noqa: F401
    dann,  # noqa: F401
    entropy_minimization,  # noqa: F401
    fixmatch,  # noqa: F401
    flexmatch,  # noqa: F401
    freematch,  # noqa: F401
    mean_teacher,  # noqa: F401
    mixmatch,  # noqa: F401
    pi_model,  # noqa: F401
    pseudo_label,  # noqa: F401
    self_training,  # noqa: F401
    supervised,  # noqa: F401
    uda,  # noqa: F401
    vat,  # noqa: F401
)
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
