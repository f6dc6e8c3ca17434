"""The options of the few-shot methods, declared once (every field is a flag of
`fewlabels fewshot`); a method reads the ones it uses and records them in its result."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from fewlabels.errors import check_options
from fewlabels.options import option

DEFAULT_TRAINING_STEPS = 500


@dataclass
class FewShotOptions:
    """How the methods train on the base classes and adapt to an episode."""

    train_steps: int | None = option(
        None, "training steps on the base classes (ProtoNet: episodes, MAML: meta-steps of "
        "--meta-batch tasks, baseline: optimiser steps rounded to whole epochs); default "
        f"{DEFAULT_TRAINING_STEPS}, or unlimited with --train-minutes")
    train_minutes: float | None = option(
        None, "wall-clock minutes of training on the base classes (stops training early "
        "when --train-steps is given as well)")
    learning_rate: float = option(
        1e-3, "Adam's learning rate of episodic training (ProtoNet; MAML's outer loop)")
    train_ways: int | None = option(
        None, "classes per training episode of ProtoNet (default --ways; MAML always trains "
        "with --ways: its classifier has that many outputs)")
    base_images_per_class: int | None = option(
        None, "train on at most this many images of each base class, chosen with --seed "
        "(default all)")
    support_steps: int = option(
        100, "baseline and baseline++: Adam steps of the new classifier on each episode's "
        "support features")
    support_lr: float = option(
        0.01, "baseline and baseline++: learning rate of the new classifier's Adam steps")
    support_weight_decay: float = option(
        1e-3, "baseline and baseline++: weight decay of the new classifier (Chen et al.: "
        "0.001)")
    cosine_scale: float = option(
        10.0, "baseline++: scale s of the cosine logits s·cos(w, f) (Chen et al.'s code uses "
        "a fixed 2 for up to 200 classes; 10 lets a softmax become confident)")
    inner_steps: int = option(5, "MAML: gradient steps on the support set during training")
    test_inner_steps: int = option(
        10, "MAML: gradient steps on the support set of a test episode")
    inner_lr: float = option(0.01, "MAML: learning rate of the inner (support-set) steps")
    first_order: bool = option(
        False, "MAML: first-order approximation (no second derivatives through the inner "
        "steps; Finn et al.'s FOMAML)")
    meta_batch: int = option(4, "MAML: tasks (episodes) per outer step")
    finetune_layers: str = option(
        "all", "finetune: what trains on each support set besides the new classifier: all "
        "(the whole backbone), head (the classifier only) or a number N (the backbone's last "
        "N layers, a layer being a convolution or linear map with its normalisation)")
    finetune_steps: int = option(
        50, "finetune: full-batch Adam steps on each episode's support images")
    finetune_lr: float = option(
        1e-4, "finetune: Adam's learning rate of the backbone layers that train (the "
        "classifier, fitted first on frozen features, trains at --support-lr)")
    feature_normalization: Literal["none", "l2"] = option(
        "none", "nearest class mean (features, pixels, protonet): compare features as they "
        "are, or scaled to unit length (l2)")

    def check(self) -> None:
        """A one-line error for an option out of range."""
        check_options([
            (self.train_steps is None or self.train_steps >= 1,
             "--train-steps must be at least 1"),
            (self.train_minutes is None or self.train_minutes > 0,
             "--train-minutes must be more than 0"),
            (self.learning_rate > 0, "--learning-rate must be more than 0"),
            (self.train_ways is None or self.train_ways >= 2, "--train-ways must be at least 2"),
            (self.base_images_per_class is None or self.base_images_per_class >= 1,
             "--base-images-per-class must be at least 1"),
            (self.support_steps >= 0, "--support-steps must be at least 0"),
            (self.support_lr > 0, "--support-lr must be more than 0"),
            (self.support_weight_decay >= 0, "--support-weight-decay must be at least 0"),
            (self.cosine_scale > 0, "--cosine-scale must be more than 0"),
            (self.inner_steps >= 1 and self.test_inner_steps >= 0,
             "--inner-steps must be at least 1 and --test-inner-steps at least 0"),
            (self.inner_lr > 0, "--inner-lr must be more than 0"),
            (self.meta_batch >= 1, "--meta-batch must be at least 1"),
            (self.finetune_layers in ("all", "head") or (self.finetune_layers.isdigit()
                                                       and int(self.finetune_layers) >= 1),
             "--finetune-layers must be all, head or a number of layers of at least 1"),
            (self.finetune_steps >= 0, "--finetune-steps must be at least 0"),
            (self.finetune_lr > 0, "--finetune-lr must be more than 0"),
        ])

    def training_length(self) -> tuple[int | None, float | None]:
        """Steps and minutes of training: the default steps when neither is given."""
        if self.train_steps is None and self.train_minutes is None:
            return DEFAULT_TRAINING_STEPS, None
        return self.train_steps, self.train_minutes
