"""The contract between a method and the engine.

A method names its views, builds its heads around any backbone and computes its loss for a
batch. Everything common (optimiser, schedule, devices, checkpoints, logging) is the engine's.
Optional hooks cover what later families need without special cases in the engine:

- ``after_optimizer_step``: momentum teachers (MoCo, BYOL, DINO) update here;
- ``on_epoch_start``: work over the whole dataset (DeepCluster's k-means, SeLa's labelling);
- buffers (queues, centres, memory banks) are registered buffers and so are checkpointed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from fewlabels.errors import UserError


@dataclass(frozen=True)
class DataInfo:
    """What a method may know about its data: shape and normalisation, never files."""

    channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_classes: int = 0


@dataclass
class Batch:
    """One training batch on the device: unlabeled uint8 images, and for semi-supervised
    methods a labeled stream with its labels."""

    unlabeled: torch.Tensor
    labeled: torch.Tensor | None = None
    labels: torch.Tensor | None = None


@dataclass(frozen=True)
class StepInfo:
    """Where training is: the global step (0-based), the epoch, the total steps, and a
    generator seeded for this step and device (stateless, so resuming is exact)."""

    step: int
    epoch: int
    total_steps: int
    generator: torch.Generator

    @property
    def progress(self) -> float:
        return self.step / max(1, self.total_steps)


@dataclass(frozen=True)
class TrainingRecipe:
    """A method's default training hyper-parameters; the CLI overrides any of them."""

    optimizer: str = "lars"
    learning_rate: float = 0.3  # for a batch of 256; scaled linearly with the batch size
    weight_decay: float = 1e-6
    batch_size: int = 512
    warmup_epochs: float = 1.0
    epochs: int = 100


class Method(nn.Module):
    """Base class of every method. Subclasses set ``name``, ``Config`` and ``recipe``."""

    name: ClassVar[str]
    Config: ClassVar[type]
    recipe: ClassVar[TrainingRecipe] = TrainingRecipe()

    def __init__(self, backbone: nn.Module, config: Any, data: DataInfo) -> None:
        super().__init__()
        self.backbone = backbone
        self.config = config
        self.data = data

    def make_views(self, batch: Batch, generator: torch.Generator) -> Any:
        """Augment the batch on its device into the inputs ``training_loss`` takes."""
        raise NotImplementedError

    def training_loss(self, inputs: Any, step: StepInfo) -> dict[str, torch.Tensor]:
        """The loss to minimise under key ``"loss"``, and any other numbers to log."""
        raise NotImplementedError

    def forward(self, inputs: Any, step: StepInfo) -> dict[str, torch.Tensor]:
        """The engine calls the method through ``forward`` so that DDP and mixed precision
        wrap the loss computation."""
        return self.training_loss(inputs, step)

    def after_optimizer_step(self, step: StepInfo) -> None:
        """Called after every optimiser step (momentum teachers update here)."""

    def on_epoch_start(self, epoch: int, images: torch.Tensor) -> None:
        """Called before each epoch with all training images (uint8, on the device)."""

    def config_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self.config)


def check_view_size(backbone: nn.Module, channels: int, size: int) -> None:
    """Raise :class:`UserError` unless ``backbone`` accepts views of ``size``² pixels.

    For methods whose views differ in size from the stored images (small views, multi-crop):
    a space-to-depth stem or a ViT patch grid accepts only some sizes, which is best found
    before training starts. One image goes through the backbone in eval mode, without grad.
    """
    if size < 1:
        raise UserError(f"the view size must be positive, got {size}")
    was_training = backbone.training
    try:
        with torch.no_grad():
            backbone.eval()(torch.zeros(1, channels, size, size))
    except (RuntimeError, ValueError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UserError(f"the backbone cannot take {size} px views ({reason}); choose a view "
                        "size that its stem or patch size divides") from None
    finally:
        backbone.train(was_training)
