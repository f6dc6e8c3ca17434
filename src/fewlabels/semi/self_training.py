"""Self-training in rounds: Noisy Student and Naive Student, inside one engine run.

Noisy Student: Xie, Luong, Hovy, Le, "Self-training with Noisy Student improves ImageNet
classification", CVPR 2020. Naive Student: Chen, Lopes, Cheng, Collins, Cubuk, Zoph, Adam,
Shlens, "Naive-Student: Leveraging Semi-Supervised Learning in Video Sequences for Urban Scene
Segmentation", ECCV 2020.

A teacher labels the unlabeled images; a student learns from the labeled images and the
pseudo-labeled ones; the student becomes the next teacher. Here the run is split into
``rounds`` equal parts of its progress (steps, or the time budget). Round 0 has no teacher
and trains on the labeled images only. At the first epoch start of each later round
(:meth:`on_epoch_start`) the moving average of the weights (what the run evaluates) becomes
the teacher (the trained weights instead while the average's start still weighs over 5% in
it, :func:`average_is_ready`, e.g. just after a new student's reset; logged as
``teacher_is_average``): it labels every image of the unlabeled pool with test-time augmentation
(:mod:`fewlabels.semi.test_time_augmentation`: the mean softmax over the image, its mirror
and four 2-pixel shifts), in eval mode and without noise, as both papers do. Kept are the
images whose largest probability reaches ``threshold`` (Noisy Student: 0.3), then at most
``top_per_class`` per predicted class, the most confident (Noisy Student's balancing keeps
the top images of each class). The targets (the teacher's probabilities, or their one-hot
arg-max with ``soft_labels false``) and the kept mask are registered buffers indexed by
``batch.indices``, so a checkpoint holds them and a run resumed within a round trains on the
same pseudo-labels.

Rounds change at epoch starts, the only time the engine hands a method the whole pool: a
round begins at the first epoch start past its share of the progress (on full
Fashion-MNIST an epoch is 133 steps at the default batch, so a 1-minute run stays in round
0). Labelling costs a pass of the teacher over the pool per view: 60,000 images x 6 views
is 360,000 forward passes (``--test-time-views flip``: a third of it).

The loss of a step: cross-entropy on the labeled batch plus ``unlabeled_weight`` times the
cross-entropy of the student against the targets, averaged over the kept images of the
unlabeled batch (the paper trains on the filtered set as a dataset, so each pseudo-labeled
image counts as much as a labeled one); only kept images are augmented and forwarded,
together with the labeled ones (one batch-norm batch). Every step logs the kept fraction of
its unlabeled batch and the accuracy of the used pseudo-labels against the hidden labels.

Noise (Noisy Student only): the student's inputs, labeled and pseudo-labeled, get
RandAugment (FixMatch's batched version, :class:`~fewlabels.augment.randaugment.
StrongAugment`, 2 ops, no Cutout by default) and its features dropout before the classifier
(0.5, the paper's; a layer of this method, not of the backbone). Stochastic depth, the
paper's third noise, is not applied: no backbone of ``fewlabels.models`` has it. Naive
Student trains with the weak augmentation only (flip and translation) and no dropout, on
hard pseudo-labels (its paper's), which is what makes it "naive".

Differences from the papers, for 28-32 px images and 20-minute CPU runs:

- One run, one learning-rate schedule: the student keeps training from the current weights
  at each round (``new_student false``) instead of being a new, equal-or-larger network
  trained from scratch. On a CPU budget a round is a third of the run; a student restarted
  in the last round would train a third as long, at an already decayed learning rate, and
  end below its teacher. ``new_student true`` restarts the student from a new random draw
  (the initial weights, each tensor's entries shuffled with the round's generator: for the
  i.i.d. initialisations of every backbone a fresh draw of the same distribution) with its
  optimiser state and its moving average reset; the learning rate still follows the run's
  one schedule. With ``--init`` the new student is random, not the pretrained backbone.
- Balancing keeps at most ``top_per_class`` images per class but does not duplicate the
  images of classes that have fewer (the paper duplicates them up to the same count).
- Pseudo-labels are averaged over flips and shifts (the issue's test-time augmentation):
  Noisy Student's teacher predicts on the plain image, Naive Student's on several scales and
  flips.
- Threshold 0.3 and soft targets (Noisy Student's defaults) for ten classes: a uniform guess
  is 0.1. RandAugment draws a random magnitude per image (FixMatch's variant) instead of the
  paper's fixed magnitude 27.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from fewlabels.augment.convert import normalize, to_float
from fewlabels.augment.randaugment import StrongAugment
from fewlabels.errors import UserError
from fewlabels.methods.base import (
    Batch,
    DataInfo,
    EpochContext,
    StepInfo,
    check_num_images,
    check_options,
)
from fewlabels.options import option
from fewlabels.semi.base import (
    ClassifierMethod,
    ClassifierNetwork,
    SemiSupervisedConfig,
    pseudo_label_numbers,
)
from fewlabels.semi.registry import SEMI_METHODS
from fewlabels.semi.test_time_augmentation import ViewSet, augmented_probabilities


@dataclass
class SelfTrainingConfig(SemiSupervisedConfig):
    """Options of the self-training rounds (Naive Student; Noisy Student adds the noise)."""

    rounds: int = option(
        3, "rounds of self-training, each an equal part of the run; round 0 trains on the "
           "labeled images only, each later one on a new teacher's pseudo-labels")
    soft_labels: bool = option(
        True, "targets are the teacher's probabilities (Noisy Student's default); false: "
              "their arg-max, hard labels")
    threshold: float = option(
        0.3, "keep the unlabeled images whose largest teacher probability is at least this "
             "(Noisy Student: 0.3); 0: keep all")
    balance_classes: bool = option(
        True, "keep at most --top-per-class images per predicted class, the most confident "
              "(Noisy Student's balancing)")
    top_per_class: int = option(
        0, "the most images kept per class when balancing; 0: the pool's size over the "
           "classes (an equal share)")
    new_student: bool = option(
        False, "restart the student from new random weights at each round (the papers' new "
               "student); false: keep training the current weights (better on a short run)")
    test_time_views: ViewSet = option(
        "flip-and-shifts", "views the teacher's probabilities are averaged over: the image "
                           "('none'), with its mirror ('flip'), and four 2-pixel shifts")


@dataclass
class NaiveStudentConfig(SelfTrainingConfig):
    soft_labels: bool = option(
        False, "targets are the teacher's probabilities; false: their arg-max, hard labels "
               "(Naive Student's)")


@dataclass
class NoisyStudentConfig(SelfTrainingConfig):
    dropout: float = option(
        0.5, "dropout on the student's features before the classifier (Noisy Student: 0.5)")
    randaugment_ops: int = option(
        2, "RandAugment operations per image of the student's inputs (Noisy Student: 2); "
           "0: weak augmentation")
    cutout: float = option(
        0.0, "Cutout square side as a fraction of the image side after RandAugment (0: none, "
             "as Noisy Student)")


def select_pseudo_labels(probabilities: torch.Tensor, threshold: float,
                         top_per_class: int | None = None) -> torch.Tensor:
    """Which rows of ``probabilities [N, K]`` become pseudo-labeled images, bool ``[N]``:
    those whose largest probability is at least ``threshold``, then, when
    ``top_per_class`` is given, at most that many per predicted class, the most confident
    (ties: the lower index first)."""
    confidence, labels = probabilities.max(dim=1)
    keep = confidence >= threshold
    if top_per_class is None:
        return keep
    for label in labels[keep].unique().tolist():
        rows = torch.nonzero(keep & (labels == label)).squeeze(1)
        if len(rows) > top_per_class:
            order = torch.sort(confidence[rows], descending=True, stable=True).indices
            keep[rows[order[top_per_class:]]] = False
    return keep


@torch.no_grad()
def shuffle_entries_(module: nn.Module, generator: torch.Generator) -> None:
    """In place: shuffle the entries of every floating-point parameter of ``module`` with
    ``generator`` and reset batch-norm running statistics. For a network at its
    initialisation (i.i.d. entries per tensor: Kaiming, truncated normal, uniform; constant
    tensors stay constant) this is a new draw of the same initialisation."""
    for parameter in module.parameters():
        if parameter.is_floating_point() and parameter.numel() > 1:
            order = torch.randperm(parameter.numel(), generator=generator,
                                   device=generator.device).to(parameter.device)
            parameter.copy_(parameter.flatten()[order].view_as(parameter))
    for submodule in module.modules():
        if isinstance(submodule, nn.modules.batchnorm._NormBase):
            submodule.reset_running_stats()


def average_is_ready(method: ClassifierMethod, since: int, now: int,
                     initial_weight: float = 0.05) -> bool:
    """Whether the method's moving average of the weights, set to the trained weights at
    step ``since``, can teach at step ``now``: its start weighs at most ``initial_weight``
    in it (:meth:`ClassifierMethod.average_start_weight`; with the average's warm-up a few
    dozen steps from step 0, but 3,000 steps at 0.999 after a new student's reset). A
    younger average is mostly its start, a teacher that keeps nothing."""
    return method.average_start_weight(since, now) <= initial_weight


class SelfTraining(ClassifierMethod):
    """Rounds of teacher labelling and student training; see the module docstring."""

    Config: ClassVar[type] = SelfTrainingConfig
    noisy: ClassVar[bool] = False

    def __init__(self, backbone: nn.Module, config: SelfTrainingConfig, data: DataInfo) -> None:
        check_num_images(data, f"{self.name} keeps a pseudo-label per unlabeled image and "
                               "needs")
        checks = [
            (config.rounds >= 1, f"--rounds must be at least 1, got {config.rounds}"),
            (0.0 <= config.threshold <= 1.0,
             f"--threshold must be in [0, 1], got {config.threshold}"),
            (config.top_per_class >= 0,
             f"--top-per-class must be at least 0, got {config.top_per_class}"),
            (config.unlabeled_ratio >= 1,
             f"{self.name} learns from unlabeled images: --unlabeled-ratio must be at least 1"),
        ]
        if self.noisy:
            checks += [
                (0.0 <= config.dropout < 1.0, f"--dropout must be in [0, 1), got {config.dropout}"),
                (config.randaugment_ops >= 0, "--randaugment-ops must be at least 0"),
            ]
        check_options(checks)
        super().__init__(backbone, config, data)
        self.dropout = nn.Dropout(config.dropout if self.noisy else 0.0)
        self.strong = (StrongAugment(config.randaugment_ops, config.cutout)
                       if self.noisy and config.randaugment_ops > 0 else None)
        count = data.num_images
        self.register_buffer("targets", torch.zeros(count, data.num_classes))
        self.register_buffer("kept", torch.zeros(count, dtype=torch.bool))
        self.register_buffer("rounds_done", torch.zeros((), dtype=torch.long))
        self.register_buffer("average_since", torch.zeros((), dtype=torch.long))  # its reset
        # The initial weights (the same on a resumed run: built from the run's seed), for a
        # new student; a plain attribute, not in checkpoints.
        self._initial = (copy.deepcopy(self._student_state()) if config.new_student else None)

    def _student_state(self) -> dict[str, torch.Tensor]:
        return {"backbone": self.backbone.state_dict(),
                "classifier": self.classifier.state_dict()}

    # -- the student's noise -----------------------------------------------------------------

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """The student: backbone, dropout (Noisy Student), classifier."""
        return self.classifier(self.dropout(self.backbone(images)))

    def student_views(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The student's inputs: RandAugment (Noisy Student) or the weak augmentation."""
        if self.strong is None:
            return self.weak_views(images, generator)
        return normalize(self.strong(to_float(images), generator), self.data.mean,
                         self.data.std, inplace=True)

    # -- between rounds ----------------------------------------------------------------------

    def round_at(self, progress: float) -> int:
        """The round of training at ``progress`` in [0, 1]."""
        rounds = self.config.rounds
        return min(int(progress * rounds + 1e-9), rounds - 1)

    def on_epoch_start(self, context: EpochContext) -> dict[str, float] | None:
        round_now = self.round_at(context.progress)
        if round_now <= int(self.rounds_done):
            return None
        if context.num_images != len(self.kept):
            raise UserError(f"{self.name} stores {len(self.kept)} pseudo-labels but the run "
                            f"trains on {context.num_images} images; start a new run")
        config = self.config
        ready = average_is_ready(self, int(self.average_since), context.step)
        teacher = self.classifier_network() if ready else ClassifierNetwork(self.backbone,
                                                                           self.classifier)
        probabilities = augmented_probabilities(teacher, context.images, context.mean,
                                                context.std, views=config.test_time_views)
        top = None
        if config.balance_classes:
            top = config.top_per_class or max(1, context.num_images // self.data.num_classes)
        kept = select_pseudo_labels(probabilities, config.threshold, top)
        targets = probabilities if config.soft_labels else F.one_hot(
            probabilities.argmax(1), self.data.num_classes).float()
        self.targets.copy_(targets)
        self.kept.copy_(kept)
        self.rounds_done.fill_(round_now)
        if config.new_student:
            self._new_student(context)
        return round_numbers(round_now, probabilities, kept) | {"teacher_is_average":
                                                                 float(ready)}

    def _new_student(self, context: EpochContext) -> None:
        """A new random student (see the module docstring), its optimiser state and moving
        average reset."""
        self.backbone.load_state_dict(self._initial["backbone"])
        self.classifier.load_state_dict(self._initial["classifier"])
        shuffle_entries_(self.backbone, context.generator)
        shuffle_entries_(self.classifier, context.generator)
        context.reset_optimizer_state([*self.backbone.parameters(),
                                       *self.classifier.parameters()])
        self.reset_average_()
        self.average_since.fill_(context.step)

    # -- every step --------------------------------------------------------------------------

    def make_views(self, batch: Batch, generator: torch.Generator) -> tuple:
        kept = self.kept[batch.indices]  # [U]
        chosen = batch.indices[kept]
        labeled = self.student_views(batch.labeled, generator)
        unlabeled = self.student_views(batch.unlabeled[kept], generator)
        return (labeled, batch.labels, unlabeled, self.targets[chosen], kept,
                self.targets[batch.indices].argmax(1), batch.hidden_labels)

    def training_loss(self, inputs: tuple, step: StepInfo) -> dict[str, torch.Tensor]:
        labeled, labels, unlabeled, targets, kept, teacher_labels, hidden = inputs
        labeled_logits, unlabeled_logits = self.logits_of(labeled, unlabeled)
        losses = self.supervised_loss(labeled_logits, labels)
        unlabeled_loss = pseudo_label_loss(unlabeled_logits, targets)
        losses["loss"] = losses["loss"] + self.config.unlabeled_weight * unlabeled_loss
        losses["unlabeled_loss"] = unlabeled_loss.detach()
        if int(self.rounds_done) > 0:  # round 0 has no teacher, so no pseudo-labels to judge
            losses |= pseudo_label_numbers(kept, teacher_labels, hidden)
        return losses


def pseudo_label_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    r"""The student's loss on its pseudo-labeled images (Xie et al. 2020, Algorithm 1, step
    2; hard targets: Chen et al. 2020), the cross-entropy averaged over them:

    .. math:: \ell_u = -\frac{1}{M} \sum_{m=1}^{M} \sum_{c} \tilde{y}_{m,c}
              \log \operatorname{softmax}(z_m)_c

    for logits ``z [M, K]`` of the kept images and targets ``ỹ [M, K]`` (the teacher's
    probabilities, or one-hot labels; class indices ``[M]`` are taken as one-hot). Zero,
    with a gradient path, when ``M = 0``."""
    if len(logits) == 0:
        return logits.sum() * 0.0
    return F.cross_entropy(logits.float(), targets)


def round_numbers(round_now: int, probabilities: torch.Tensor, kept: torch.Tensor
                  ) -> dict[str, float]:
    """What a round's labelling logs: the round, the pseudo-labeled count and fraction, their
    mean teacher confidence and the sizes of the smallest and largest predicted class among
    them."""
    confidence, labels = probabilities.max(dim=1)
    sizes = torch.bincount(labels[kept], minlength=probabilities.shape[1])
    numbers = {"round": float(round_now), "pseudo_labeled": float(kept.sum()),
               "pseudo_labeled_fraction": float(kept.float().mean()),
               "smallest_class": float(sizes.min()), "largest_class": float(sizes.max())}
    if kept.any():
        numbers["pseudo_label_confidence"] = float(confidence[kept].mean())
    return numbers


@SEMI_METHODS.register("noisy-student", "Noisy Student: rounds of a teacher's test-time-"
                                        "augmented pseudo-labels and a student noised by "
                                        "RandAugment and dropout (Xie et al. 2020)")
class NoisyStudent(SelfTraining):
    name = "noisy-student"
    Config = NoisyStudentConfig
    paper = "Xie, Luong, Hovy, Le, CVPR 2020"
    noisy = True


@SEMI_METHODS.register("naive-student", "Naive Student: rounds of a teacher's test-time-"
                                        "augmented hard pseudo-labels, student without "
                                        "extra noise (Chen et al. 2020)")
class NaiveStudent(SelfTraining):
    name = "naive-student"
    Config = NaiveStudentConfig
    paper = "Chen, Lopes, Cheng, Collins, Cubuk, Zoph, Adam, Shlens, ECCV 2020"
