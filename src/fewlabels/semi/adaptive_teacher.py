r"""Momentum-teacher self-training for domain adaptation (``teacher-adapt``): Mean Teacher
made for domain adaptation (French et al., "Self-ensembling for visual domain adaptation",
ICLR 2018) with FlexMatch's class-balanced adaptive thresholds (Zhang et al., NeurIPS
2021), for ``fewlabels adapt``.

The labeled stream is the source domain, the unlabeled stream the target domain. Each step:

1. the teacher (the moving average of the student's weights, ``self.average``, in eval
   mode, no gradient) predicts every target image from ``--teacher-views`` fixed views (the
   image, its mirror image, then translations by 1/16 of the side to the right, left, down
   and up: :mod:`fewlabels.semi.test_time_augmentation`, whose view set Noisy Student's
   teacher uses too); the views' class probabilities are averaged (for a classifier,
   re-projecting a crop or a flip onto the image leaves the class probabilities as they
   are, so re-projection is the mean), :math:`\bar q_u = \frac{1}{V}\sum_v
   \mathrm{softmax}(T(a_v(u)))`;
2. its arg-max is the pseudo-label, kept when the averaged confidence reaches the class's
   adaptive threshold :math:`\mathcal{T}(\hat y_u)` (:class:`~fewlabels.losses.semi.
   FlexMatchThresholds`, base threshold ``--threshold``: classes the teacher already
   predicts confidently for many target images keep a high threshold, rare ones a low one;
   ``--min-threshold`` puts a floor under all of them, 0.8 by default, French et al.'s
   fixed 0.968 being the extreme);
3. the student learns the source labels on weakly augmented source images and the kept
   pseudo-labels on strongly augmented target images (RandAugment + Cutout), one forward
   pass for both:

.. math::

    \mathcal{L} = \frac{1}{B}\sum_{i}\mathrm{CE}(f(\alpha(x_i)), y_i)
        + \lambda_u \frac{1}{\mu B}\sum_{u} \mathbb{1}[\max \bar q_u \ge
          \mathcal{T}(\hat y_u)]\, \mathrm{CE}(f(\mathcal{A}(u)), \hat y_u)

Then the thresholds take the batch's (gathered) averaged predictions, and after the
optimiser step the teacher moves towards the student (decay ``--ema-decay``, French et
al.'s 0.99; the run evaluates the teacher).

Why a floor: FlexMatch's thresholds start at 0 and, with its warm-up, stay near 0 until a
good part of the target images have been confident once, which on 60,000 target images is
more than an epoch. A young teacher then hands every target image its guess: in a 1-minute
run from Fashion-MNIST to fashion-mnist-m (small ConvNet) every pseudo-label passed at 9 to
20% accuracy and the target test accuracy fell to 13.6% (source only: 21.5%); with the floor
at 0.8 (UDA's confidence threshold; not tuned here) it stayed at 22.1%. French et al. needed
their fixed high threshold for the same reason.

How it differs from French et al.: they train the student towards the teacher's
probabilities with a squared difference, masked at a fixed confidence 0.968, plus a
class-balance loss, with the teacher in train mode on its own augmented copy and source and
target in separate batches (per-domain batch-norm statistics); here the consistency is
FixMatch's hard pseudo-label on a strong view, the class balance comes from FlexMatch's
thresholds (which start low: its warm-up lets most pseudo-labels through while few images are
confident), the teacher's pseudo-label is the mean of several views in eval mode (the
test-time augmentation of Noisy Student), and source and target share one batch-norm batch
as in every classifier method here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fewlabels.augment.convert import normalize, to_float
from fewlabels.augment.randaugment import StrongAugment
from fewlabels.distributed import gather_no_gradient
from fewlabels.errors import UserError
from fewlabels.losses.consistency import fixmatch_unlabeled_loss
from fewlabels.losses.semi import FlexMatchThresholds
from fewlabels.methods.base import Batch, DataInfo, StepInfo, check_num_images
from fewlabels.options import option
from fewlabels.semi.base import ClassifierMethod, SemiSupervisedConfig, pseudo_label_numbers
from fewlabels.semi.registry import SEMI_METHODS
from fewlabels.semi.test_time_augmentation import VIEW_SETS, TestTimeAugmented, default_shift

TEACHER_VIEWS = VIEW_SETS["flip-and-shifts"]


@dataclass
class TeacherAdaptConfig(SemiSupervisedConfig):
    ema_decay: float = option(
        0.99, "decay of the teacher, the moving average of the weights, which the run "
        "also evaluates (French et al.: 0.99)")
    unlabeled_ratio: int = option(
        1, "target images per source image in a batch (French et al.: equal numbers, 1)")
    threshold: float = option(
        0.95, "base confidence threshold tau of the class-adaptive thresholds (FlexMatch: "
        "0.95)")
    threshold_warmup: bool = option(
        True, "FlexMatch's threshold warm-up: count the images never yet confident")
    min_threshold: float = option(
        0.8, "floor under every class's adaptive threshold (0: FlexMatch's alone, which "
        "start at 0 and pass every pseudo-label until many target images have been "
        "confident)")
    teacher_views: int = option(
        6, "views of each target image the teacher's pseudo-label averages, in the order "
        "image, mirror image, shifted right, left, down, up (1 to 6)")
    strong_ops: int = option(2, "RandAugment operations of the student's strong view")


@SEMI_METHODS.register("teacher-adapt", "momentum-teacher self-training with averaged "
                                        "pseudo-labels and adaptive thresholds "
                                        "(fewlabels adapt)")
class TeacherAdapt(ClassifierMethod):
    """Mean Teacher for domain adaptation with test-time-augmented pseudo-labels and
    FlexMatch thresholds."""

    name = "teacher-adapt"
    domain_adaptation = True
    Config = TeacherAdaptConfig
    paper = ("French et al., Self-ensembling for visual domain adaptation, ICLR 2018; "
             "thresholds of Zhang et al., FlexMatch, NeurIPS 2021")

    def __init__(self, backbone: nn.Module, config: TeacherAdaptConfig, data: DataInfo) -> None:
        super().__init__(backbone, config, data)
        check_num_images(data, "teacher-adapt keeps a pseudo-label per target image and needs")
        if config.unlabeled_ratio < 1:
            raise UserError("teacher-adapt needs target images in every batch: "
                            "--unlabeled-ratio >= 1")
        if not 0 < config.threshold <= 1 or not 0 <= config.min_threshold <= 1:
            raise UserError(f"--threshold must be in (0, 1] and --min-threshold in [0, 1], "
                            f"got {config.threshold} and {config.min_threshold}")
        if not 1 <= config.teacher_views <= len(TEACHER_VIEWS) or config.strong_ops < 0:
            raise UserError(f"--teacher-views must be in 1..{len(TEACHER_VIEWS)} and "
                            "--strong-ops >= 0")
        self.thresholds = FlexMatchThresholds(data.num_images, data.num_classes,
                                              config.threshold, config.threshold_warmup)
        self.strong = StrongAugment(n_ops=config.strong_ops)
        self.shift = default_shift(data.image_size)

    def eval_mode_modules(self) -> list[nn.Module]:
        # The teacher predicts with its running statistics (copied from the student's).
        return [*super().eval_mode_modules(), self.average]

    def make_views(self, batch: Batch, generator: torch.Generator) -> tuple:
        strong = self.strong(to_float(batch.unlabeled), generator)
        return (self.weak_views(batch.labeled, generator), batch.labels,
                normalize(strong, self.data.mean, self.data.std, inplace=True),
                self.normalized(batch.unlabeled), batch.indices, batch.hidden_labels)

    def training_loss(self, inputs: tuple, step: StepInfo) -> dict[str, torch.Tensor]:
        source, labels, strong, target, indices, hidden_labels = inputs
        teacher = TestTimeAugmented(self.average, TEACHER_VIEWS[:self.config.teacher_views],
                                    self.shift)
        with torch.no_grad():
            probabilities = teacher(target)  # [U, K]: the views' mean softmax
        source_logits, strong_logits = self.logits_of(source, strong)
        numbers = self.supervised_loss(source_logits, labels)
        thresholds = self.thresholds.class_thresholds().clamp_min(self.config.min_threshold)
        unlabeled_loss, confident = fixmatch_unlabeled_loss(strong_logits, probabilities,
                                                            thresholds)
        self.thresholds.update(gather_no_gradient(probabilities), gather_no_gradient(indices))
        numbers["loss"] = numbers["loss"] + self.config.unlabeled_weight * unlabeled_loss
        numbers["unlabeled_loss"] = unlabeled_loss.detach()
        numbers["mean_threshold"] = thresholds.mean().detach()
        numbers |= pseudo_label_numbers(confident, probabilities.argmax(1), hidden_labels)
        return numbers
