"""A test method that exercises every hook and declaration of the engine and records what it
saw, so tests can check that the engine calls each at the right moment with the right values.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from fewlabels.engine.optim import ParameterOptions
from fewlabels.engine.schedule import Schedule
from fewlabels.methods import METHODS, Batch, Method, StepInfo, TrainingRecipe
from fewlabels.methods.base import EpochContext, embedding_spread
from fewlabels.models.momentum import copy_as_teacher, ema_update_
from fewlabels.options import option


@dataclass
class ProbeConfig:
    # Names an engine option already has: they must not collide with it.
    batch_size: int = option(7, "a method option named like the engine's --batch-size")
    feature_dim: int = option(5, "a method option named like the backbone's --feature-dim")
    symmetric: bool = option(True, "a bool option")
    crop_scale: tuple[float, float] = option((0.4, 1.0), "a tuple option")
    limit: int | None = option(None, "an optional option")
    base_momentum: float = option(0.9, "teacher momentum at the start")
    collapse: bool = option(False, "report a collapsed embedding spread")


class Probe(Method):
    """Records the engine's calls: ``self.calls`` in order, with the values it saw."""

    name = "probe"
    Config = ProbeConfig
    paper = "none"
    default_representation = "teacher"
    collapse_hint = "this is the probe's hint"
    recipe = TrainingRecipe(optimizer="sgd", learning_rate=0.1, weight_decay=0.01,
                            batch_size=8, warmup_epochs=1.0, epochs=3, gradient_clip=0.5)

    def __init__(self, backbone: nn.Module, config: ProbeConfig, data) -> None:  # noqa: ANN001
        super().__init__(backbone, config, data)
        self.head = nn.Linear(backbone.feature_dim, 4)
        self.fixed = nn.Linear(4, 4)  # keeps its peak learning rate
        self.teacher = copy_as_teacher(backbone)
        self.calls: list[tuple] = []
        self.images_seen: list[bool] = []
        self.teacher_modes: list[bool] = []
        self.all_images: torch.Tensor | None = None
        self.epoch_features: list[torch.Tensor] = []
        self.epoch_draws: list[torch.Tensor] = []

    def schedules(self) -> dict[str, Schedule]:
        return {"teacher_momentum": Schedule(self.config.base_momentum, 1.0, "cosine")}

    def parameter_options(self, name: str, parameter: nn.Parameter) -> ParameterOptions:
        if name.startswith("fixed."):
            return ParameterOptions(weight_decay=False, lars=False,
                                    scheduled_learning_rate=False)
        return super().parameter_options(name, parameter)

    def representations(self) -> dict[str, nn.Module]:
        return {"teacher": self.teacher, "backbone": self.backbone}

    def eval_mode_modules(self) -> list[nn.Module]:
        return [self.teacher]

    def on_epoch_start(self, context: EpochContext) -> dict[str, float]:
        self.calls.append(("epoch", context.epoch))
        self.all_images = context.images
        self.epoch_features.append(context.features(self.backbone, batch_size=5))
        self.epoch_draws.append(torch.rand(3, generator=context.generator))
        # momentum buffers of the head are forgotten, as after a re-initialisation
        context.reset_optimizer_state(self.head.parameters())
        return {"probe_number": float(context.num_images)}

    def make_views(self, batch: Batch, generator: torch.Generator) -> torch.Tensor:
        # the batch's indices name its images (known from the first epoch work; a run resumed
        # within an epoch sees its first at the next epoch)
        assert batch.indices is not None
        if self.all_images is not None:
            self.images_seen.append(bool(torch.equal(self.all_images[batch.indices],
                                                     batch.unlabeled)))
        return batch.unlabeled.float() / 255

    def training_loss(self, inputs: torch.Tensor, step: StepInfo) -> dict[str, torch.Tensor]:
        self.teacher_modes.append(self.teacher.training)
        features = self.backbone(inputs)
        output = self.fixed(self.head(features))
        with torch.no_grad():
            target = self.teacher(inputs).mean()
        loss = 100 * (output - target).square().mean()  # large gradients: clipping shows
        spread = torch.tensor(0.0) if self.config.collapse else embedding_spread(output)
        self.calls.append(("loss", step.step, step.progress, dict(step.values)))
        return {"loss": loss, "embedding_spread": spread}

    def before_optimizer_step(self, step: StepInfo) -> None:
        norms = [p.grad.norm().item() for p in self.parameters() if p.grad is not None]
        self.calls.append(("before_step", step.step, max(norms)))

    def after_optimizer_step(self, step: StepInfo) -> None:
        ema_update_(self.teacher, self.backbone, step.value("teacher_momentum"), buffers="own")
        self.calls.append(("after_step", step.step, step.value("teacher_momentum")))


@contextlib.contextmanager
def probe_registered():
    """Register the probe method for the duration of a test."""
    METHODS.register("probe", "a method that records the engine's calls (tests)")(Probe)
    try:
        yield Probe
    finally:
        METHODS._entries.pop("probe")  # noqa: SLF001 - tests only
        METHODS._summaries.pop("probe")  # noqa: SLF001
