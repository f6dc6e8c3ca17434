"""The contract between a method and the engine.

A method names its views, builds its heads around any backbone and computes its loss for a
batch. Everything common (optimiser, schedules, devices, checkpoints, logging, the collapse
monitor) is the engine's. What a method may declare, each with a default that does nothing
special:

- ``recipe``: its training hyperparameters (:class:`TrainingRecipe`);
- :meth:`schedules`: hyperparameters of its own that follow a schedule (teacher momentum,
  teacher temperature); the engine evaluates them every step into ``StepInfo.values``;
- :meth:`parameter_options`: which parameters get no weight decay, no LARS adaptation, or a
  learning rate that does not decay;
- ``sync_batch_norm``: whether batch norm takes its statistics over all devices;
- :meth:`representations` and ``default_representation``: what a run evaluates and exports;
- :meth:`eval_mode_modules`: submodules that stay in eval mode while training (a teacher
  whose paper runs it so);
- hooks: :meth:`before_optimizer_step` (between backward and the step: DINO's frozen last
  layer, SwAV's frozen prototypes), :meth:`after_optimizer_step` (momentum teachers, queues)
  and :meth:`on_epoch_start` (work over the whole dataset, with an :class:`EpochContext`);
- :meth:`cluster_heads`: the method's own cluster assignments, for the clustering protocol;
- state: queues, centres and memory banks are registered buffers, so checkpoints hold them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from fewlabels.augment.recipes import SimCLRViews, default_local_view_size, default_view_size
from fewlabels.engine.epoch_work import EpochContext
from fewlabels.engine.optim import ParameterOptions
from fewlabels.engine.recipe import TrainingRecipe
from fewlabels.engine.schedule import Schedule
from fewlabels.errors import UserError, check_options
from fewlabels.options import to_plain

__all__ = ["Batch", "DataInfo", "EpochContext", "Method", "ParameterOptions", "StepInfo",
           "TrainingRecipe", "check_num_images", "check_options", "check_view_size",
           "single_view_recipe", "embedding_spread", "resolve_multicrop_sizes",
           "resolve_view_size"]


@dataclass(frozen=True)
class DataInfo:
    """What a method may know about its data: shape, normalisation and size, never files."""

    channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_classes: int = 0
    num_images: int = 0  # training images (memory banks); 0 in runs made before it was stored


@dataclass
class Batch:
    """One training batch on the device: unlabeled uint8 images with their indices in the
    training set (memory banks, per-image pseudo-labels), and for classifier runs a labeled
    stream with its labels and indices into the labeled set (``unlabeled`` is None when a
    classifier run has no unlabeled stream). ``hidden_labels`` are the true labels of the
    unlabeled images when the data has them: for logging the pseudo-label accuracy only,
    never for training."""

    unlabeled: torch.Tensor | None
    indices: torch.Tensor | None = None
    labeled: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    labeled_indices: torch.Tensor | None = None
    hidden_labels: torch.Tensor | None = None


@dataclass(frozen=True)
class StepInfo:
    """Where training is: the global step (0-based), the epoch, the progress in [0, 1] (the
    fraction of training done, by steps or by the time budget), the scheduled values of this
    step (``values["learning_rate"]``, ``values["teacher_momentum"]``, ...) and a generator
    seeded for this step and device (stateless, so resuming is exact)."""

    step: int
    epoch: int
    progress: float
    generator: torch.Generator
    steps_per_epoch: int = 1
    values: dict[str, float] = field(default_factory=dict)

    def value(self, name: str) -> float:
        return self.values[name]


class Method(nn.Module):
    """Base class of every method. Subclasses set ``name``, ``Config``, ``recipe`` and
    ``paper``."""

    name: ClassVar[str]
    Config: ClassVar[type]
    paper: ClassVar[str] = ""
    recipe: ClassVar[TrainingRecipe] = TrainingRecipe()
    # Batch-norm statistics over all devices (SyncBatchNorm) when training on several.
    sync_batch_norm: ClassVar[bool] = True
    default_representation: ClassVar[str] = "backbone"
    # What to try when the collapse monitor stops a run.
    collapse_hint: ClassVar[str] = "lower --lr or train with a larger --batch-size"

    def __init__(self, backbone: nn.Module, config: Any, data: DataInfo) -> None:
        super().__init__()
        self.backbone = backbone
        self.config = config
        self.data = data

    # -- what the engine asks every step -----------------------------------------------------

    def make_views(self, batch: Batch, generator: torch.Generator) -> Any:
        """Augment the batch on its device into the inputs ``training_loss`` takes."""
        raise NotImplementedError

    def training_loss(self, inputs: Any, step: StepInfo) -> dict[str, torch.Tensor]:
        """The loss to minimise under key ``"loss"``, and other numbers to log. The key
        ``"embedding_spread"`` (see :func:`embedding_spread`) feeds the collapse monitor."""
        raise NotImplementedError

    def forward(self, inputs: Any, step: StepInfo) -> dict[str, torch.Tensor]:
        """The engine calls the method through ``forward`` so that DDP and mixed precision
        wrap the loss computation."""
        return self.training_loss(inputs, step)

    def before_optimizer_step(self, step: StepInfo) -> None:
        """Called after backward (gradients unscaled, clipped by the recipe's
        ``gradient_clip``) and before the optimiser step."""

    def after_optimizer_step(self, step: StepInfo) -> None:
        """Called after every optimiser step (momentum teachers update here)."""

    def on_epoch_start(self, context: EpochContext) -> dict[str, float] | None:
        """Work over the whole training set before an epoch (DeepCluster's k-means, SeLa's
        labels): ``context`` gives the features of every training image, a generator seeded
        from the run's seed and the epoch, and a way to reset a re-initialised head's
        optimiser state (:class:`EpochContext`).

        Called before the first step of every epoch, also when a run resumes exactly at an
        epoch boundary, but not when it resumes within an epoch: per-image labels belong in
        registered buffers, which checkpoints hold. Returned numbers are logged with the
        seconds the work took as one ``"epoch_work"`` record of ``metrics.jsonl``; ``None``
        logs nothing."""
        return None

    # -- declarations ------------------------------------------------------------------------

    def schedules(self) -> dict[str, Schedule]:
        """Scheduled hyperparameters of the method, by name (``StepInfo.values``)."""
        return {}

    def parameter_options(self, name: str, parameter: nn.Parameter) -> ParameterOptions:
        """Biases and normalisation parameters (tensors of fewer than 2 dimensions) get no
        weight decay and no LARS adaptation (SimCLR, BYOL, nanoGPT), nor do parameters a
        backbone names in ``no_weight_decay`` (a ViT's position embedding and class token)."""
        exempt = parameter.ndim < 2 or _named_exempt(self, name)
        return ParameterOptions(weight_decay=not exempt, lars=not exempt)

    def representations(self) -> dict[str, nn.Module]:
        """The networks a run can evaluate or export, by name; each maps images to features
        ``[N, D]``. ``default_representation`` names the one the paper evaluates."""
        return {"backbone": self.backbone}

    def cluster_heads(self) -> dict[str, nn.Module]:
        """The method's own cluster assignments, by name: modules mapping normalised images
        ``[N, C, H, W]`` to cluster scores ``[N, K]`` (the assignment is the arg-max), which
        ``evaluate --protocol clusters`` scores against the true labels. None by default."""
        return {}

    def reconstruct(self, images: torch.Tensor, generator: torch.Generator
                    ) -> dict[str, torch.Tensor]:
        """Masked image modelling methods: mask normalised ``images [N, C, H, W]`` with
        ``generator`` and predict them; returns ``"masked"`` (the input with its masked
        pixels at 0), ``"reconstruction"`` (the prediction, normalised like the input) and
        ``"mask"`` (bool ``[N, 1, H, W]``, True where masked). Other methods raise
        :class:`UserError`."""
        raise UserError(f"{self.name} runs make no reconstructions; train a masked image "
                        "modelling method (e.g. --method mae --backbone vit)")

    def eval_mode_modules(self) -> list[nn.Module]:
        """Submodules kept in eval mode while the method trains."""
        return []

    def train(self, mode: bool = True) -> Method:
        super().train(mode)
        if mode:
            for module in self.eval_mode_modules():
                module.eval()
        return self

    def config_dict(self) -> dict[str, Any]:
        return {k: to_plain(v) for k, v in dataclasses.asdict(self.config).items()}


def _named_exempt(method: nn.Module, name: str) -> bool:
    """True when ``name`` ends with a parameter its module lists in ``no_weight_decay``."""
    module_path, _, leaf = name.rpartition(".")
    module = method.get_submodule(module_path) if module_path else method
    return leaf in getattr(module, "no_weight_decay", ())


def embedding_spread(embeddings: torch.Tensor) -> torch.Tensor:
    """How spread out a batch of embeddings is: the standard deviation across the batch of
    the L2-normalised embeddings, averaged over dimensions and multiplied by ``sqrt(D)``.

    About 1 for embeddings spread over the sphere, 0 when every image maps to the same point
    (the collapse SimSiam's paper shows with this very statistic, Chen & He 2021, Fig. 2).
    """
    with torch.no_grad():
        normalised = F.normalize(embeddings.detach().float(), dim=1)
        return normalised.std(dim=0).mean() * normalised.shape[1] ** 0.5


def pretext_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The fraction of rows whose arg-max is the label (no gradient): what to watch in the
    pretext tasks that classify (rotation, jigsaw, relative patch location, exemplar)."""
    with torch.no_grad():
        return (logits.argmax(dim=1) == labels).float().mean()


def resolve_view_size(backbone: nn.Module, data: DataInfo, size: int) -> int:
    """The side of a method's views: ``size``, or when it is 0 the default for the data's
    images (:func:`~fewlabels.augment.recipes.default_view_size`), checked against
    ``backbone`` (:func:`check_view_size`) when it differs from the stored images' side.
    Methods store the resolved size in their config, so a resumed run keeps its views if the
    default rule changes."""
    view_size = size or default_view_size(data.image_size)
    if view_size != data.image_size:
        check_view_size(backbone, data.channels, view_size)
    return view_size


def check_num_images(data: DataInfo, needs: str) -> None:
    """A method that keeps something per training image (memory bank, pseudo-labels) needs
    their number, which runs made before it was stored lack; ``needs`` says what needs it,
    e.g. ``"NPID sizes its memory bank from"``."""
    if data.num_images < 1:
        raise UserError(f"{needs} the number of training images, which this run's "
                        "description lacks (an older run); start a new run")


def single_view_recipe(backbone: nn.Module, config: Any, data: DataInfo
                       ) -> tuple[SimCLRViews, int]:
    """SimCLR's augmentation with one view per image (NPID, DeepCluster, SeLa) at
    ``config.view_size`` (0: the default size, see :func:`resolve_view_size`), from the
    config's ``crop_scale_min``, ``jitter_strength`` and ``grayscale_probability``; returns
    the recipe and the resolved size."""
    view_size = resolve_view_size(backbone, data, config.view_size)
    views = SimCLRViews(image_size=view_size, mean=data.mean, std=data.std,
                        crop_scale=(config.crop_scale_min, 1.0),
                        jitter_strength=config.jitter_strength,
                        grayscale_p=config.grayscale_probability, num_views=1)
    return views, view_size


def resolve_multicrop_sizes(backbone: nn.Module, data: DataInfo, global_size: int,
                            local_size: int, local_views: int) -> tuple[int, int]:
    """The sides of multi-crop's global and local views (DINO, SwAV): each, or when it is 0
    its default (:func:`~fewlabels.augment.recipes.default_view_size`, then
    :func:`~fewlabels.augment.recipes.default_local_view_size` of the global side), checked
    against ``backbone`` where views of that size are made."""
    global_size = resolve_view_size(backbone, data, global_size)
    local_size = local_size or default_local_view_size(global_size)
    if local_views:
        check_view_size(backbone, data.channels, local_size)
    return global_size, local_size


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
