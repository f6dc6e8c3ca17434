"""Baseline and Baseline++ (Chen, Liu, Kira, Wang & Huang, "A Closer Look at Few-shot
Classification", ICLR 2019).

Training: an ordinary classifier on the base classes' images, on the engine's one supervised
loop (:func:`fewlabels.semi.training.train_classifier`: weak augmentation, SGD, the moving
average of the weights): linear for Baseline, cosine (:mod:`fewlabels.fewshot.cosine`) for
Baseline++. Evaluation: the classifier is thrown away, the backbone frozen (eval mode), the
novel images embedded once, and each episode gets a new classifier of the same kind fitted to
its support features (:mod:`fewlabels.fewshot.support_classifier`).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from fewlabels.evaluate.features import extract_features
from fewlabels.fewshot.config import FewShotOptions
from fewlabels.fewshot.cosine import CosineSupervised
from fewlabels.fewshot.registry import FEWSHOT_METHODS, MethodOutcome
from fewlabels.fewshot.support_classifier import ClassifierKind, support_classifier_accuracies
from fewlabels.fewshot.task import FewShotTask
from fewlabels.semi.training import train_classifier


def train_on_base_classes(task: FewShotTask, options: FewShotOptions, kind: ClassifierKind
                          ) -> tuple[nn.Module, dict[str, Any]]:
    """A classifier (linear or cosine) trained on the base classes from
    :meth:`~fewlabels.fewshot.task.FewShotTask.new_backbone`; its backbone (the moving
    average, eval mode) and the training's settings."""
    steps, minutes = options.training_length()
    cosine = kind == "cosine"
    trained = train_classifier(
        task.new_backbone(), task.data, task.base,
        method=CosineSupervised if cosine else "supervised",
        options={"cosine_scale": options.cosine_scale} if cosine else None,
        steps=steps, budget_minutes=minutes, seed=task.seed, device=task.device)
    return trained.network().backbone.eval(), trained.settings()


def _baseline(task: FewShotTask, options: FewShotOptions, kind: ClassifierKind
              ) -> MethodOutcome:
    backbone, training = train_on_base_classes(task, options, kind)
    cosine = kind == "cosine"
    features = extract_features(backbone, task.novel.images, task.data.mean, task.data.std,
                                device=task.device)
    accuracies = support_classifier_accuracies(
        features, task.episodes, kind=kind, steps=options.support_steps,
        learning_rate=options.support_lr, weight_decay=options.support_weight_decay,
        scale=options.cosine_scale, seed=task.seed)
    settings: dict[str, Any] = {
        "training": training, "classifier": kind,
        "support_steps": options.support_steps, "support_lr": options.support_lr,
        "support_weight_decay": options.support_weight_decay}
    if cosine:
        settings["cosine_scale"] = options.cosine_scale
    return MethodOutcome(accuracies, settings)


@FEWSHOT_METHODS.register("baseline", "Chen et al.'s Baseline: linear classifier on the base "
                                      "classes, a new one fitted to each support set")
def baseline(task: FewShotTask, options: FewShotOptions) -> MethodOutcome:
    return _baseline(task, options, "linear")


@FEWSHOT_METHODS.register("baseline++", "Chen et al.'s Baseline++: the same with cosine "
                                        "classifiers")
def baseline_plus_plus(task: FewShotTask, options: FewShotOptions) -> MethodOutcome:
    return _baseline(task, options, "cosine")
