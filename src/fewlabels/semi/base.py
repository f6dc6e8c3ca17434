"""What every classifier method shares: supervised training, fine-tuning and the
semi-supervised methods, all on the engine's one training loop.

A classifier method is a :class:`~fewlabels.methods.base.Method` whose batches pair a labeled
stream with an unlabeled one (:mod:`fewlabels.engine.streams`; USB's ``train_step(x_lb, y_lb,
x_ulb_w, x_ulb_s)``). This base holds:

- a linear classifier on the backbone's pooled features;
- a moving average of backbone and classifier weights (Polyak averaging, decay 0.999 as in
  FixMatch and USB, warmed up as TensorFlow's so a short run's average is not still its
  random start; batch-norm statistics copied from the trained network), which is what the
  run evaluates, predicts with and exports;
- the weak augmentation (a translation by up to 1/8 of the side and a horizontal flip,
  FixMatch's);
- one forward pass over labeled and unlabeled images together, so batch norm normalises
  them as one batch (FixMatch's code concatenates them);
- the numbers a run logs beyond its loss: the supervised loss, the labeled batch's accuracy,
  the pseudo-label rate and, when the data has hidden labels, the pseudo-labels' accuracy.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from fewlabels.augment.convert import normalize, to_float
from fewlabels.augment.geometric import translate_and_flip
from fewlabels.engine.recipe import TrainingRecipe
from fewlabels.errors import UserError
from fewlabels.methods.base import DataInfo, Method, ParameterOptions, StepInfo
from fewlabels.models.momentum import copy_as_teacher, ema_update_
from fewlabels.options import option


@dataclass
class ClassifierConfig:
    """Options every classifier method has."""

    ema_decay: float = option(
        0.999, "decay of the moving average of the weights that evaluation, predict and "
        "export use (FixMatch: 0.999); 0: the trained weights themselves")
    max_shift: float = option(
        0.125, "weak augmentation: largest translation, as a fraction of the image side "
        "(FixMatch: 0.125)")
    flip: bool = option(True, "weak augmentation: random horizontal flips")
    backbone_lr_scale: float = option(
        1.0, "the backbone's learning rate as a fraction of the classifier's: below 1 a "
        "pretrained backbone changes slowly (protects what it learned); 0 freezes it, batch "
        "norm included (a linear classifier trained by SGD)")
    head_init: Literal["random", "probe"] = option(
        "random", "the classifier's start: random, or probe (fitted to the labeled images' "
        "features by L-BFGS before training: linear probing then fine-tuning, Kumar et al. "
        "2022; for --init runs)")


@dataclass
class SemiSupervisedConfig(ClassifierConfig):
    """Options of the methods that learn from unlabeled images as well."""

    unlabeled_ratio: int = option(
        7, "mu: unlabeled images per labeled image in a batch (FixMatch: 7)")
    unlabeled_weight: float = option(1.0, "lambda_u: weight of the unlabeled loss")


# FixMatch's optimiser: SGD with Nesterov momentum 0.9, weight decay 5e-4, learning rate 0.03
# for 64 labeled images a step (0.12 per 256, as recipes count), no warm-up, decayed as
# lr·cos(7πt/16).
FIXMATCH_RECIPE = TrainingRecipe(
    optimizer="sgd", learning_rate=0.12, weight_decay=5e-4, batch_size=64, warmup_epochs=0.0,
    epochs=30, momentum=0.9, nesterov=True, lr_decay="fixmatch")


class ClassifierNetwork(nn.Module):
    """A backbone and a linear classifier: normalised images -> logits ``[N, classes]``."""

    def __init__(self, backbone: nn.Module, classifier: nn.Linear) -> None:
        super().__init__()
        self.backbone = backbone
        self.classifier = classifier

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.backbone(images))


class ClassifierMethod(Method):
    """Base of classifier methods: backbone + linear classifier, their moving average, the
    weak augmentation and the supervised loss. Subclasses write ``make_views`` and
    ``training_loss``; runs evaluate :meth:`classifier_network`."""

    Config: ClassVar[type] = ClassifierConfig
    recipe: ClassVar[TrainingRecipe] = FIXMATCH_RECIPE
    # True for methods that align a labeled source domain with an unlabeled target domain
    # (fewlabels adapt); `fewlabels semi` refuses them.
    domain_adaptation: ClassVar[bool] = False

    def __init__(self, backbone: nn.Module, config: ClassifierConfig, data: DataInfo) -> None:
        super().__init__(backbone, config, data)
        if data.num_classes < 2:
            raise UserError(f"{self.name} trains a classifier and needs labeled data with at "
                            "least 2 classes; pass a dataset with labels")
        if not 0 <= config.ema_decay < 1:
            raise UserError(f"--ema-decay must be in [0, 1), got {config.ema_decay}")
        if not 0 <= config.max_shift < 0.5:
            raise UserError(f"--max-shift must be in [0, 0.5), got {config.max_shift}")
        if config.backbone_lr_scale < 0:
            raise UserError(f"--backbone-lr-scale must be at least 0, got "
                            f"{config.backbone_lr_scale}")
        if config.head_init not in ("random", "probe"):
            raise UserError(f"--head-init must be random or probe, got {config.head_init!r}")
        if config.backbone_lr_scale == 0:
            # frozen: no gradient is computed for it at all (a FixMatch step costs a third)
            backbone.requires_grad_(False)
        self.classifier = nn.Linear(int(backbone.feature_dim), data.num_classes)
        self.average = copy_as_teacher(ClassifierNetwork(backbone, self.classifier))

    @property
    def unlabeled_ratio(self) -> int:
        """μ, the unlabeled images per labeled image of a batch (0: no unlabeled stream)."""
        return int(getattr(self.config, "unlabeled_ratio", 0))

    # -- networks ----------------------------------------------------------------------------

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """The trained network's logits for normalised images."""
        return self.classifier(self.backbone(images))

    def logits_of(self, *groups: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Logits of several groups of images from one forward pass, so batch norm takes
        its statistics over all of them together (FixMatch's labeled + unlabeled batch)."""
        logits = self.logits(torch.cat(groups))
        return tuple(logits.split([len(group) for group in groups]))

    def classifier_network(self) -> nn.Module:
        """What the run evaluates and predicts with: the moving average of the weights, or
        the trained weights when ``ema_decay`` is 0."""
        if self.config.ema_decay > 0:
            return self.average
        return ClassifierNetwork(self.backbone, self.classifier)

    def representations(self) -> dict[str, nn.Module]:
        return {"backbone": self.classifier_network().backbone, "student": self.backbone}

    def load_backbone_(self, state: dict[str, torch.Tensor]) -> None:
        """Start from a pretrained backbone (fine-tuning, ``--init``): load ``state`` into
        the backbone and restart the moving average from it."""
        self.backbone.load_state_dict(state)
        self.reset_average_()

    def start_(self, backbone_state: dict[str, torch.Tensor] | None,
               labeled_images: torch.Tensor, labels: torch.Tensor) -> float | None:
        """A new run's starting weights: the pretrained ``backbone_state`` when given
        (``--init``), then with ``head_init="probe"`` the classifier fitted to the labeled
        images' features. Returns that fit's training accuracy (``None`` without a probe)."""
        if backbone_state is not None:
            self.load_backbone_(backbone_state)
        if self.config.head_init == "probe":
            return self.fit_head_(labeled_images, labels)
        return None

    @torch.no_grad()
    def reset_average_(self) -> None:
        """The moving average := the trained weights."""
        ema_update_(self.average, ClassifierNetwork(self.backbone, self.classifier), 0.0)

    def parameter_options(self, name: str, parameter: nn.Parameter) -> ParameterOptions:
        """The base class's exemptions, and the backbone at ``backbone_lr_scale`` times the
        learning rate."""
        options = super().parameter_options(name, parameter)
        if name.startswith("backbone.") and self.config.backbone_lr_scale != 1.0:
            return dataclasses.replace(options,
                                       learning_rate_scale=self.config.backbone_lr_scale)
        return options

    def eval_mode_modules(self) -> list[nn.Module]:
        """A frozen backbone (``backbone_lr_scale`` 0) keeps its batch-norm statistics."""
        return [self.backbone] if self.config.backbone_lr_scale == 0 else []

    @torch.no_grad()
    def fit_head_(self, images: torch.Tensor, labels: torch.Tensor, *,
                  weight_decay: float = 1e-3, iterations: int = 100) -> float:
        """Fit the classifier to the backbone's features of uint8 ``images`` (eval mode, no
        augmentation) by full-batch L-BFGS on cross-entropy + ``weight_decay``·‖W‖²/2, then
        restart the moving average from the result (``--head-init probe``). Deterministic,
        so every device fits the same head. Returns the fit's training accuracy."""
        was_training = self.training
        self.backbone.eval()
        features = torch.cat([self.backbone(self.normalized(images[start:start + 512]))
                              for start in range(0, len(images), 512)])
        self.train(was_training)
        weight = torch.zeros_like(self.classifier.weight, requires_grad=True)
        bias = torch.zeros_like(self.classifier.bias, requires_grad=True)
        optimizer = torch.optim.LBFGS([weight, bias], max_iter=iterations,
                                      line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            with torch.enable_grad():
                loss = (F.cross_entropy(features @ weight.T + bias, labels)
                        + weight_decay / 2 * weight.square().sum())
                loss.backward()
            return loss

        optimizer.step(closure)
        self.classifier.weight.copy_(weight.detach())
        self.classifier.bias.copy_(bias.detach())
        self.reset_average_()
        return ((features @ weight.T + bias).argmax(1) == labels).float().mean().item()

    def average_decay(self, step: int) -> float:
        """The moving average's decay after optimiser step ``step`` (0-based):
        ``min(ema_decay, (1 + step) / (10 + step))``, the warm-up of TensorFlow's
        ``ExponentialMovingAverage(num_updates=...)``. Without it a 0.999 average would
        still hold a third of the random initial weights after 1,000 steps; a 20-minute CPU
        run takes a few hundred to a thousand."""
        return min(self.config.ema_decay, (1 + step) / (10 + step))

    def average_start_weight(self, since: int, now: int) -> float:
        """How much the moving average's starting point (the trained weights at step
        ``since``, a random network at step 0) still weighs in it at step ``now``: the
        product of the decays of the steps between (0 when the average is off)."""
        if self.config.ema_decay == 0:
            return 0.0
        return math.exp(sum(math.log(self.average_decay(t)) for t in range(since, now)))

    def after_optimizer_step(self, step: StepInfo) -> None:
        ema_update_(self.average, ClassifierNetwork(self.backbone, self.classifier),
                    self.average_decay(step.step), buffers="copy")

    # -- views -------------------------------------------------------------------------------

    def normalized(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images -> float, normalised with the data's statistics."""
        return normalize(to_float(images), self.data.mean, self.data.std, inplace=True)

    def weak_views(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """FixMatch's weak augmentation of uint8 images, normalised."""
        shift = round(self.config.max_shift * images.shape[-1])
        moved = translate_and_flip(to_float(images), max_shift=shift, flip=self.config.flip,
                                   generator=generator)
        return normalize(moved, self.data.mean, self.data.std, inplace=True)

    # -- losses and logs ---------------------------------------------------------------------

    def supervised_loss(self, logits: torch.Tensor, labels: torch.Tensor
                        ) -> dict[str, torch.Tensor]:
        """Cross-entropy on the labeled batch, with its accuracy for the log."""
        loss = F.cross_entropy(logits, labels)
        with torch.no_grad():
            accuracy = (logits.argmax(1) == labels).float().mean()
        return {"loss": loss, "supervised_loss": loss.detach(), "labeled_accuracy": accuracy}


def pseudo_label_numbers(confident: torch.Tensor, pseudo_labels: torch.Tensor,
                         hidden_labels: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """What a user needs to judge a threshold: ``pseudo_label_rate``, the fraction of the
    unlabeled batch whose pseudo-label is used (``confident``, bool ``[U]``); and when the
    data has hidden labels, ``pseudo_label_accuracy`` (of the used pseudo-labels; absent
    when none is used) and ``unlabeled_accuracy`` (of all of them)."""
    with torch.no_grad():
        numbers = {"pseudo_label_rate": confident.float().mean()}
        if hidden_labels is not None:
            right = pseudo_labels == hidden_labels
            numbers["unlabeled_accuracy"] = right.float().mean()
            if confident.any():
                numbers["pseudo_label_accuracy"] = right[confident].float().mean()
        return numbers
