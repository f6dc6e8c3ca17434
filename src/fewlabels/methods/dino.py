"""DINO: self-distillation with no labels.

Caron, Touvron, Misra, Jégou, Mairal, Bojanowski, Joulin, "Emerging Properties in
Self-Supervised Vision Transformers", ICCV 2021. A student (backbone + DINO head) learns to
predict, from every view of an image, the output distribution of a teacher on the image's
global views. The teacher is a momentum (EMA) copy of the student whose coefficient rises on a
cosine from ``teacher_momentum`` to ``final_teacher_momentum``; collapse is avoided by
*centring* the teacher's logits with an EMA centre over the global batch and *sharpening* them
with a low temperature (warmed up from ``warmup_teacher_temperature``). Multi-crop: two global
views (blurred with probability 1.0 and 0.1, the second solarised with 0.2) that both networks
see, and ``local_views`` small views that only the student sees. As in the paper's code, the
last layer of the head is frozen during the first epoch(s) and the teacher runs in train mode
with its own batch-norm statistics (its EMA touches parameters only); gradients are clipped per
tensor (the recipe's ``gradient_clip``); the weight decay may follow a cosine (the recipe's
``final_weight_decay``). The teacher's backbone is the representation evaluated, as in the
paper.

Differences from the paper's ImageNet recipe, for 28-32 px images and 10-minute runs on a
CPU (docs/benchmarks.md has the search behind each): global views of 3/4 of the image side
(20 px for Fashion-MNIST); no local views by default (``--local-views 6`` gives the paper's
multi-crop, at 12 px: at a fixed budget their cost outweighed their gain here); a head of 512
hidden units with batch norm, a 128-d bottleneck and 1024 outputs instead of 2048 without
batch norm, 256 and 65536 (without batch norm in the head the ConvNet's teacher drifted to a
uniform output and kNN accuracy fell below a random network's); teacher momentum from 0.99
instead of 0.996; SimCLR's LARS recipe (0.6 per 256 images, weight decay 1e-6) instead of
SGD at 0.03. For a ViT, the paper's ViT recipe is ``--backbone vit --optimizer adamw --lr
0.0005 --weight-decay 0.04 --final-weight-decay 0.4 --gradient-clip 3 --head-batch-norm
false --local-views 6``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from fewlabels.augment.multicrop import MultiCropViews
from fewlabels.engine.schedule import Schedule
from fewlabels.losses.distillation import dino_loss, teacher_entropy, updated_center
from fewlabels.methods.base import (
    Batch,
    DataInfo,
    Method,
    StepInfo,
    TrainingRecipe,
    embedding_spread,
    resolve_multicrop_sizes,
)
from fewlabels.methods.registry import METHODS
from fewlabels.models.heads import DINOHead
from fewlabels.models.momentum import copy_as_teacher, ema_update_
from fewlabels.options import option


@dataclass
class DINOConfig:
    out_dim: int = option(1024, "outputs of the head (K, the paper's 65536)")
    hidden_dim: int = option(512, "hidden units of the head's MLP (the paper's 2048)")
    bottleneck_dim: int = option(128, "the head's L2-normalised bottleneck (the paper's 256)")
    head_batch_norm: bool = option(
        True, "batch norm in the head's MLP (the paper: none; the ConvNet needs it here)")
    normalize_last_layer: bool = option(
        True, "fix the norm of the head's last-layer rows to 1 (the paper's norm_last_layer: "
              "more stable; false lets them grow)")
    student_temperature: float = option(0.1, "student temperature tau_s")
    teacher_temperature: float = option(0.04, "teacher temperature tau_t after its warm-up")
    warmup_teacher_temperature: float = option(
        0.04, "teacher temperature at the start of its warm-up")
    warmup_teacher_temperature_epochs: float = option(
        0.0, "epochs of linear teacher-temperature warm-up (the paper: 0, or 30 of 100)")
    teacher_momentum: float = option(
        0.99, "EMA coefficient of the teacher at the start (the paper: 0.996; 0: the teacher "
              "is the student)")
    final_teacher_momentum: float = option(1.0, "EMA coefficient at the end of the cosine")
    centering: bool = option(True, "centre the teacher's logits (false: the collapse "
                                   "ablation of the paper)")
    center_momentum: float = option(0.9, "EMA coefficient of the centre")
    freeze_last_layer_epochs: float = option(
        1.0, "epochs during which the head's last layer gets no update")
    global_view_size: int = option(
        0, "side of the global views in pixels; 0: 3/4 of the image side (as SimCLR's)")
    local_view_size: int = option(
        0, "side of the local views; 0: 3/5 of the global side rounded to a multiple of 4")
    local_views: int = option(
        0, "local views per image (the paper: 6 or 10; 0: the two global views only)")
    global_crop_scale: tuple[float, float] = option(
        (0.4, 1.0), "area of a global crop, as a fraction of the image: min,max")
    local_crop_scale: tuple[float, float] = option(
        (0.05, 0.4), "area of a local crop: min,max")


@METHODS.register("dino", "DINO: self-distillation with a centred, sharpened momentum "
                          "teacher and multi-crop (Caron et al. 2021)")
class DINO(Method):
    """DINO with multi-crop, a momentum teacher, centring and sharpening."""

    name = "dino"
    Config = DINOConfig
    paper = "Caron et al., ICCV 2021"
    default_representation = "teacher"
    collapse_hint = ("keep centring on, raise --teacher-momentum towards 0.996-0.999, or "
                     "lower --teacher-temperature")
    # SimCLR's LARS recipe: the paper's ResNet-50 recipe (SGD 0.03 per 256, weight decay
    # 1e-4) learned nothing in a short run (docs/benchmarks.md, DINO's search).
    recipe = TrainingRecipe(
        optimizer="lars", learning_rate=0.6, weight_decay=1e-6, batch_size=512,
        warmup_epochs=1.0, epochs=100,
    )

    def __init__(self, backbone: nn.Module, config: DINOConfig, data: DataInfo) -> None:
        super().__init__(backbone, config, data)
        global_size, local_size = resolve_multicrop_sizes(
            backbone, data, config.global_view_size, config.local_view_size, config.local_views)
        # Stored resolved, so a resumed run keeps its views if a default rule changes.
        self.config = dataclasses.replace(config, global_view_size=global_size,
                                          local_view_size=local_size)
        self.views = MultiCropViews(
            data.mean, data.std, global_size=global_size, local_size=local_size,
            local_views=config.local_views, global_scale=config.global_crop_scale,
            local_scale=config.local_crop_scale)
        self.head = DINOHead(backbone.feature_dim, config.out_dim, config.hidden_dim,
                             config.bottleneck_dim, batch_norm=config.head_batch_norm,
                             normalize_last_layer=config.normalize_last_layer)
        self.teacher_backbone = copy_as_teacher(backbone)
        self.teacher_head = copy_as_teacher(self.head)
        self.register_buffer("center", torch.zeros(config.out_dim))

    # -- declarations ------------------------------------------------------------------------

    def schedules(self) -> dict[str, Schedule]:
        config = self.config
        return {
            "teacher_momentum": Schedule(config.teacher_momentum,
                                         config.final_teacher_momentum, "cosine"),
            "teacher_temperature": Schedule.warmup_constant(
                config.warmup_teacher_temperature, config.teacher_temperature,
                config.warmup_teacher_temperature_epochs),
        }

    def representations(self) -> dict[str, nn.Module]:
        return {"teacher": self.teacher_backbone, "backbone": self.backbone}

    # -- training ----------------------------------------------------------------------------

    def make_views(self, batch: Batch, generator: torch.Generator) -> tuple:
        return self.views(batch.unlabeled, generator)  # globals [2N, ...], locals [L*N, ...]

    def _student(self, views: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(views))

    def training_loss(self, inputs: tuple, step: StepInfo) -> dict[str, torch.Tensor]:
        global_views, local_views = inputs
        with torch.no_grad():
            teacher_logits = self.teacher_head(self.teacher_backbone(global_views))  # [2n, K]
        # One pass per resolution: the student sees every view.
        student_logits = self._student(global_views)  # [2n, K]
        if local_views is not None:
            student_logits = torch.cat([student_logits, self._student(local_views)])
        temperature = step.value("teacher_temperature")
        loss = dino_loss(student_logits, teacher_logits, self.center,
                         self.config.student_temperature, temperature,
                         self.views.num_global_views)
        entropy = teacher_entropy(teacher_logits, self.center, temperature)
        # The spread of the teacher's distributions, not of its logits: both of DINO's
        # collapses (to a uniform output, to one dimension) give every image the same
        # distribution, while the logits can still differ by a per-image constant.
        with torch.no_grad():
            targets = torch.softmax((teacher_logits.float() - self.center) / temperature, dim=1)
        if self.config.centering:  # after the loss, which used the centre of before
            self.center.copy_(updated_center(self.center, teacher_logits,
                                             self.config.center_momentum))
        return {"loss": loss, "embedding_spread": embedding_spread(targets),
                "teacher_entropy": entropy.mean, "teacher_entropy_of_mean": entropy.of_mean}

    def before_optimizer_step(self, step: StepInfo) -> None:
        """The paper freezes the head's last layer in the first epoch: its gradient is dropped
        (so neither the update nor the weight decay moves it)."""
        if step.step < self.config.freeze_last_layer_epochs * step.steps_per_epoch:
            for parameter in self.head.last_layer.parameters():
                parameter.grad = None

    @torch.no_grad()
    def after_optimizer_step(self, step: StepInfo) -> None:
        momentum = step.value("teacher_momentum")
        ema_update_(self.teacher_backbone, self.backbone, momentum, buffers="own")
        ema_update_(self.teacher_head, self.head, momentum, buffers="own")
