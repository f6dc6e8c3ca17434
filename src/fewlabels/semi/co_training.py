"""Co-training: two networks, each teaching the other its most confident labels.

Blum & Mitchell, "Combining Labeled and Unlabeled Data with Co-Training", COLT 1998; the deep
version: Qiao, Shen, Zhang, Wang, Yuille, "Deep Co-Training for Semi-Supervised Image
Recognition", ECCV 2018.

Two classifiers (backbone + linear layer each; the second backbone a copy of the first with
its initial weights redrawn, see :func:`~fewlabels.semi.self_training.shuffle_entries_`)
learn from two views of every image: two independent draws of the weak augmentation (flip
and translation). The run is split into ``rounds`` equal parts of its progress; round 0
trains both on the labeled images only. At the first epoch start of each later round
(:meth:`CoTraining.on_epoch_start`), each network's moving average (its trained weights
while the average is young, :func:`~fewlabels.semi.self_training.average_is_ready`) labels
the unlabeled pool
(test-time augmentation, :mod:`fewlabels.semi.test_time_augmentation`: by default the mean
of the image's and its mirror's softmax), and its most confident predictions, at most
``top_per_class`` per predicted class among the images the other network has no label for
yet, join the OTHER network's labeled set, as Blum & Mitchell's classifiers add their
confident examples to the labeled pool. The sets only grow; a label once given stays. They
are registered buffers (``given[0]``: the labels the first network learns, from the second;
``given[1]``: the reverse; -1 where none), indexed by ``batch.indices``, so checkpoints
hold them.

The loss of a step, for networks ``f_1`` and ``f_2`` on views ``v_1`` and ``v_2``::

    L = CE(f_1(v_1(x_l)), y) + CE(f_2(v_2(x_l)), y)
        + λ_u [CE(f_1(v_1(u)), ŷ_2→1)  averaged over u in the first network's given set
               + CE(f_2(v_2(u)), ŷ_1→2) averaged over u in the second network's given set]

each network's labeled and pseudo-labeled images in one forward pass.

Evaluation, predict and export: :meth:`CoTraining.classifier_network` is the two moving-
average networks as one ensemble whose logits are ``log((softmax(f_1) + softmax(f_2)) /
2)`` (so a softmax of them gives the mean probability); ``representations()["backbone"]``
is the first network's averaged backbone.

Differences from the papers: Deep Co-Training's own losses are not implemented: its
co-training loss (the Jensen-Shannon divergence between the two networks' predictions on
the same unlabeled image) and its view-difference loss (each network must keep its
prediction on the adversarial examples of the other, which costs two extra forward and
backward passes a step: too much for a CPU budget). This is the classic confident-labels
exchange of Blum & Mitchell with deep networks and augmentation-made views, the brief of
this library's issue. Blum & Mitchell draw a small pool and add a few examples per round over
many rounds; a 20-minute run affords few labellings of the whole pool, so each round adds up
to ``N / (classes × rounds)`` images per class.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from fewlabels.errors import UserError
from fewlabels.methods.base import (
    Batch,
    DataInfo,
    EpochContext,
    ParameterOptions,
    StepInfo,
    check_num_images,
    check_options,
)
from fewlabels.models.momentum import copy_as_teacher, ema_update_
from fewlabels.options import option
from fewlabels.semi.base import (
    ClassifierMethod,
    ClassifierNetwork,
    SemiSupervisedConfig,
    pseudo_label_numbers,
)
from fewlabels.semi.registry import SEMI_METHODS
from fewlabels.semi.self_training import (
    average_is_ready,
    pseudo_label_loss,
    select_pseudo_labels,
    shuffle_entries_,
)
from fewlabels.semi.test_time_augmentation import ViewSet, augmented_probabilities


@dataclass
class CoTrainingConfig(SemiSupervisedConfig):
    rounds: int = option(
        4, "rounds, each an equal part of the run; round 0 trains on the labels only, each "
           "later one starts with an exchange of confident labels")
    top_per_class: int = option(
        0, "images per predicted class a network gives the other at each exchange, the most "
           "confident; 0: the pool's size over classes x rounds")
    threshold: float = option(
        0.0, "give only predictions whose largest probability is at least this")
    test_time_views: ViewSet = option(
        "flip", "views the predictions are averaged over: the image ('none'), with its "
                "mirror ('flip'), and four 2-pixel shifts ('flip-and-shifts')")


class AveragedEnsemble(nn.Module):
    """Two classifier networks as one: normalised images -> ``log`` of the mean of their
    softmax probabilities ``[N, K]`` (logits whose softmax is the mean probability).
    ``backbone`` is the first network's."""

    def __init__(self, first: nn.Module, second: nn.Module) -> None:
        super().__init__()
        self.first, self.second = first, second

    @property
    def backbone(self) -> nn.Module:
        return self.first.backbone

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        mean = (self.first(images).float().softmax(dim=1)
                + self.second(images).float().softmax(dim=1)) / 2
        return mean.clamp_min(torch.finfo(mean.dtype).tiny).log()


@SEMI_METHODS.register("co-training", "co-training: two networks on two augmented views, each "
                                      "giving its most confident labels to the other (Blum & "
                                      "Mitchell 1998; Qiao et al. 2018)")
class CoTraining(ClassifierMethod):
    """Two backbones and classifiers exchanging confident pseudo-labels between rounds; see
    the module docstring."""

    name = "co-training"
    Config = CoTrainingConfig
    paper = "Blum & Mitchell, COLT 1998; Qiao, Shen, Zhang, Wang, Yuille, ECCV 2018"

    def __init__(self, backbone: nn.Module, config: CoTrainingConfig, data: DataInfo) -> None:
        check_num_images(data, "co-training keeps a pseudo-label per unlabeled image and needs")
        check_options([
            (config.rounds >= 1, f"--rounds must be at least 1, got {config.rounds}"),
            (0.0 <= config.threshold <= 1.0,
             f"--threshold must be in [0, 1], got {config.threshold}"),
            (config.top_per_class >= 0,
             f"--top-per-class must be at least 0, got {config.top_per_class}"),
            (config.unlabeled_ratio >= 1,
             "co-training learns from unlabeled images: --unlabeled-ratio must be at least 1"),
        ])
        # The second backbone, drawn before the base builds its classifier, from the global
        # generator the run seeds (the same on every device and on a resumed run).
        second = copy.deepcopy(backbone)
        seed = int(torch.randint(2**62, ()))
        shuffle_entries_(second, torch.Generator().manual_seed(seed))
        super().__init__(backbone, config, data)
        self.second_backbone = second.requires_grad_(config.backbone_lr_scale != 0)
        self.second_classifier = nn.Linear(int(second.feature_dim), data.num_classes)
        self.second_average = copy_as_teacher(
            ClassifierNetwork(self.second_backbone, self.second_classifier))
        self.register_buffer("given", torch.full((2, data.num_images), -1, dtype=torch.long))
        self.register_buffer("rounds_done", torch.zeros((), dtype=torch.long))

    # -- networks ----------------------------------------------------------------------------

    def second_network(self) -> ClassifierNetwork:
        return ClassifierNetwork(self.second_backbone, self.second_classifier)

    def networks(self) -> tuple[nn.Module, nn.Module]:
        """The two networks that label and evaluate: the moving averages (the trained
        weights when ``ema_decay`` is 0)."""
        if self.config.ema_decay > 0:
            return self.average, self.second_average
        return ClassifierNetwork(self.backbone, self.classifier), self.second_network()

    def classifier_network(self) -> nn.Module:
        """The two networks' ensemble, :class:`AveragedEnsemble`."""
        first, second = self.networks()
        return AveragedEnsemble(first, second).train(first.training)

    def representations(self) -> dict[str, nn.Module]:
        first, second = self.networks()
        return {"backbone": first.backbone, "second_backbone": second.backbone,
                "student": self.backbone}

    def load_backbone_(self, state: dict[str, torch.Tensor]) -> None:
        """``--init``: both backbones start from the pretrained weights (the networks then
        differ by their classifiers' initialisation and their views)."""
        self.second_backbone.load_state_dict(state)
        super().load_backbone_(state)

    def fit_head_(self, images: torch.Tensor, labels: torch.Tensor, **options: float) -> float:
        """``--head-init probe``: each classifier fitted to its own backbone's features (the
        base's fit, run once per network); returns the first fit's training accuracy."""
        accuracy = super().fit_head_(images, labels, **options)
        self._swap_networks()
        try:
            super().fit_head_(images, labels, **options)
        finally:
            self._swap_networks()
        self.reset_average_()
        return accuracy

    def _swap_networks(self) -> None:
        self.backbone, self.second_backbone = self.second_backbone, self.backbone
        self.classifier, self.second_classifier = self.second_classifier, self.classifier

    @torch.no_grad()
    def reset_average_(self) -> None:
        super().reset_average_()
        ema_update_(self.second_average, self.second_network(), 0.0)

    def after_optimizer_step(self, step: StepInfo) -> None:
        super().after_optimizer_step(step)
        ema_update_(self.second_average, self.second_network(), self.average_decay(step.step),
                    buffers="copy")

    def parameter_options(self, name: str, parameter: nn.Parameter) -> ParameterOptions:
        """The second network's parameters get what the first's same parameters get."""
        if name.startswith("second_"):
            name = name.removeprefix("second_")
        return super().parameter_options(name, parameter)

    def eval_mode_modules(self) -> list[nn.Module]:
        modules = super().eval_mode_modules()
        if any(module is self.backbone for module in modules):
            modules.append(self.second_backbone)
        return modules

    # -- between rounds ----------------------------------------------------------------------

    def on_epoch_start(self, context: EpochContext) -> dict[str, float] | None:
        rounds = self.config.rounds
        round_now = min(int(context.progress * rounds + 1e-9), rounds - 1)
        if round_now <= int(self.rounds_done):
            return None
        if context.num_images != self.given.shape[1]:
            raise UserError(f"co-training stores {self.given.shape[1]} pseudo-labels but the "
                            f"run trains on {context.num_images} images; start a new run")
        config = self.config
        top = config.top_per_class or max(
            1, context.num_images // (self.data.num_classes * rounds))
        numbers: dict[str, float] = {"round": float(round_now)}
        # Both networks label before either set changes.
        ready = average_is_ready(self, 0, context.step)
        teachers = self.networks() if ready else (
            ClassifierNetwork(self.backbone, self.classifier), self.second_network())
        predictions = [augmented_probabilities(teacher, context.images, context.mean,
                                               context.std, views=config.test_time_views)
                       for teacher in teachers]  # 2 x [N, K]
        for source, probabilities in enumerate(predictions):
            receiver = 1 - source
            free = self.given[receiver] < 0  # images the receiver has no label for yet
            candidates = probabilities * free[:, None]  # taken ones: confidence 0, never kept
            chosen = select_pseudo_labels(candidates, max(config.threshold, 1e-12), top)
            self.given[receiver][chosen] = probabilities.argmax(1)[chosen]
            numbers[f"given_to_{('first', 'second')[receiver]}"] = float(chosen.sum())
        numbers["first_labeled"] = float((self.given[0] >= 0).sum())
        numbers["second_labeled"] = float((self.given[1] >= 0).sum())
        self.rounds_done.fill_(round_now)
        return numbers | {"teacher_is_average": float(ready)}

    # -- every step --------------------------------------------------------------------------

    def make_views(self, batch: Batch, generator: torch.Generator) -> tuple:
        given = self.given[:, batch.indices]  # [2, U]
        in_first, in_second = given[0] >= 0, given[1] >= 0
        first = self.weak_views(torch.cat([batch.labeled, batch.unlabeled[in_first]]),
                                generator)
        second = self.weak_views(torch.cat([batch.labeled, batch.unlabeled[in_second]]),
                                 generator)
        return (first, second, batch.labels, given[0][in_first], given[1][in_second],
                in_first, in_second, given, batch.hidden_labels)

    def training_loss(self, inputs: tuple, step: StepInfo) -> dict[str, torch.Tensor]:
        (first, second, labels, first_targets, second_targets, in_first, in_second, given,
         hidden) = inputs
        count = len(labels)
        first_logits = self.logits(first)
        second_logits = self.second_network()(second)
        losses = self.supervised_loss(first_logits[:count], labels)
        second_losses = self.supervised_loss(second_logits[:count], labels)
        unlabeled_loss = (pseudo_label_loss(first_logits[count:], first_targets)
                          + pseudo_label_loss(second_logits[count:], second_targets))
        losses["loss"] = (losses["loss"] + second_losses["loss"]
                          + self.config.unlabeled_weight * unlabeled_loss)
        losses["second_supervised_loss"] = second_losses["supervised_loss"]
        losses["second_labeled_accuracy"] = second_losses["labeled_accuracy"]
        losses["unlabeled_loss"] = unlabeled_loss.detach()
        if int(self.rounds_done) > 0:
            # Over (image, network) pairs: the fraction with a given label, and their
            # accuracy; no label at all for the others, so no unlabeled accuracy.
            numbers = pseudo_label_numbers(
                torch.cat([in_first, in_second]), given.flatten(),
                None if hidden is None else torch.cat([hidden, hidden]))
            numbers.pop("unlabeled_accuracy", None)
            losses |= numbers
        return losses
