"""A classifier run from Python, without a run folder: the engine's one training loop for
many short trainings (evaluation's fine-tuning protocol and supervised baseline, one per
label budget and split seed).

:func:`train_classifier` does what `fewlabels semi` does between parsing and testing: build
the classifier method on a backbone (fresh, or started from a pretrained backbone's
weights), pair the labeled images with the unlabeled ones, and call
:func:`fewlabels.engine.trainer.train` with a one-device Fabric. The engine's metrics and
final checkpoint go to a temporary folder that is deleted afterwards; the caller keeps the
trained method, whose :meth:`~fewlabels.semi.base.ClassifierMethod.classifier_network` (the
moving average of the weights) is what gets tested.

A length in steps is rounded to whole epochs (an epoch is one pass over the labeled images
when the method has no unlabeled stream, else over the unlabeled ones), so the schedules end
where the recipe says; the number of steps taken is returned.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fewlabels.data.imageset import ImageSet
from fewlabels.engine.recipe import TrainingRecipe
from fewlabels.engine.run_control import make_fabric
from fewlabels.engine.streams import LabeledStream
from fewlabels.engine.trainer import TrainConfig, TrainingInterrupted, train
from fewlabels.errors import UserError
from fewlabels.methods.base import DataInfo
from fewlabels.options import from_plain
from fewlabels.semi.base import ClassifierMethod
from fewlabels.semi.registry import SEMI_METHODS
from fewlabels.threads import single_thread_if_small

# Batches of fewer pixel values than this train on one intra-op thread (see
# fewlabels.threads.single_thread_if_small): on 2 shared cores, 40 supervised steps on 10
# images took 23 s on two threads and 2.7 s on one. 128 images of 28 px are below it.
SINGLE_THREAD_BELOW = 1 << 17


def moving_average_decay(steps: int, *, longest: float = 0.999, span: float = 0.1) -> float:
    """The decay of the moving average of the weights for a run of ``steps``: FixMatch's
    0.999, or less for short runs, so that the average's time constant ``1 / (1 - decay)``
    is at most ``span`` of the run. At 0.999 a 200-step run would test a network that is
    still 0.999**200 = 82 % its initial weights; 200 steps get 0.95 (a 20-step memory), 2000
    get 0.995."""
    return min(longest, max(0.0, 1.0 - 1.0 / max(1.0, span * steps)))


@dataclass
class TrainedClassifier:
    """A trained classifier method and how long it trained."""

    method: ClassifierMethod
    steps: int
    epochs: int
    recipe: TrainingRecipe
    seconds: float

    def network(self) -> nn.Module:
        """What to test: the method's classifier network (the moving average of the weights
        unless ``ema_decay`` is 0), in eval mode."""
        return self.method.classifier_network().eval()

    def settings(self) -> dict[str, Any]:
        """How it was trained, for a results file."""
        recipe = self.recipe
        return {
            "method": self.method.name, "steps": self.steps, "epochs": self.epochs,
            "optimizer": recipe.optimizer, "batch_size": recipe.batch_size,
            "lr": recipe.learning_rate * recipe.batch_size / 256, "lr_decay": recipe.lr_decay,
            "weight_decay": recipe.weight_decay, "warmup_epochs": recipe.warmup_epochs,
            "ema_decay": self.method.config.ema_decay, "max_shift": self.method.config.max_shift,
            "flip": self.method.config.flip, "seconds": round(self.seconds, 2),
        }


def epochs_for_steps(steps: int, num_labeled: int, batch_size: int, unlabeled_ratio: int = 0,
                     num_unlabeled: int = 0) -> tuple[int, int]:
    """Whole epochs closest to ``steps`` (at least one), and the steps they take. An epoch is
    ``ceil(labeled / batch)`` steps without an unlabeled stream, else ``unlabeled // (μ·batch)``
    (the engine's streams)."""
    if unlabeled_ratio == 0:
        per_epoch = math.ceil(num_labeled / batch_size)
    else:
        per_epoch = num_unlabeled // (unlabeled_ratio * batch_size)
        if per_epoch < 1:
            raise UserError(f"{num_unlabeled} unlabeled images do not fill one batch of "
                            f"{unlabeled_ratio} x {batch_size}; lower --batch-size or the "
                            "unlabeled ratio")
    epochs = max(1, round(steps / per_epoch))
    return epochs, epochs * per_epoch


def train_classifier(
    backbone: dict[str, Any] | nn.Module,
    data: DataInfo,
    labeled: ImageSet,
    *,
    unlabeled: torch.Tensor | None = None,
    hidden_labels: torch.Tensor | None = None,
    method: str | type[ClassifierMethod] = "supervised",
    options: dict[str, Any] | None = None,
    recipe: TrainingRecipe | None = None,
    steps: int | None = None,
    budget_minutes: float | None = None,
    init: dict[str, torch.Tensor] | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> TrainedClassifier:
    """Train classifier method ``method`` (a name in ``SEMI_METHODS``, or a
    :class:`ClassifierMethod` subclass that is not registered, such as few-shot Baseline++'s
    cosine classifier; with config ``options``) on ``labeled`` and, for semi-supervised
    methods, the uint8 ``unlabeled`` images, on the engine's training loop; return it
    trained.

    ``backbone`` is a backbone spec (as stored in run specs) or a freshly made backbone
    module, which the method then owns; ``init``, when given, is a pretrained backbone's
    state to start from (fine-tuning; the moving average restarts from it), and with the
    option ``head_init="probe"`` the classifier is first fitted to the labeled images'
    features (as `fewlabels semi --head-init probe` does). ``data``
    describes the images (its normalisation is used as is: a pretrained backbone's own);
    ``num_classes`` is raised to cover the labels. ``recipe`` defaults to the method's;
    ``steps`` replaces its epochs (rounded to whole epochs, see :func:`epochs_for_steps`);
    ``budget_minutes`` stops training after that much wall-clock time (with ``steps``, the
    schedules follow the steps; without, they follow the fraction of the budget spent).
    ``hidden_labels`` (aligned with ``unlabeled``) are only logged. The initial weights and the
    batches follow ``seed``; the global random state is left as it was. One device
    (``device``: cpu, cuda, mps), full precision.
    """
    if labeled.labels is None or len(labeled) == 0:
        raise UserError("training a classifier needs labeled images")
    chosen = method if isinstance(method, type) else SEMI_METHODS.get(method)
    recipe = recipe or chosen.recipe
    num_classes = max(data.num_classes, int(labeled.labels.max()) + 1)
    data = dataclasses.replace(data, num_classes=num_classes)
    config = from_plain(chosen.Config, dict(options or {}))
    ratio = int(getattr(config, "unlabeled_ratio", 0))
    if ratio and unlabeled is None:
        raise UserError(f"{method} learns from unlabeled images as well; give them")
    images = unlabeled if ratio else labeled.images
    data = dataclasses.replace(data, num_images=len(images))
    epochs = recipe.epochs
    if steps is not None:
        epochs, _ = epochs_for_steps(steps, len(labeled), recipe.batch_size, ratio, len(images))
        recipe = recipe.replace(epochs=epochs)
    device = torch.device(device)
    run_spec = {"kind": "classifier", "method": chosen.name,
                "backbone": backbone if isinstance(backbone, dict) else type(backbone).__name__}
    pixels = (1 + ratio) * recipe.batch_size * labeled.images[0].numel()
    with torch.random.fork_rng(devices=[]), tempfile.TemporaryDirectory() as folder, \
            single_thread_if_small(pixels, SINGLE_THREAD_BELOW):
        torch.manual_seed(seed)
        network = backbone if isinstance(backbone, nn.Module) else _make_backbone(backbone, data)
        trained = chosen(network, config, data)
        trained.start_(init, labeled.images, labeled.labels)
        stream = LabeledStream(labeled.images, labeled.labels, ratio,
                               hidden_labels=hidden_labels if ratio else None)
        config_ = TrainConfig(
            run_dir=Path(folder), recipe=recipe, seed=seed, budget_minutes=budget_minutes,
            epochs_given=budget_minutes is None or steps is not None,
            accelerator=device.type, devices=1, precision="32-true", progress=False,
            tensorboard=False, checkpoint_minutes=math.inf, collapse_monitor=False)
        fabric = make_fabric(device.type, 1, 1, "32-true")
        started = time.perf_counter()
        try:
            result = train(trained, images, config_, run_spec, fabric, None, stream)
        except TrainingInterrupted as interrupted:
            raise KeyboardInterrupt from interrupted
    return TrainedClassifier(trained, result.step, epochs, recipe,
                             time.perf_counter() - started)


def _make_backbone(spec: dict[str, Any], data: DataInfo) -> nn.Module:
    from fewlabels.runs import make_backbone  # runs imports this package

    return make_backbone(spec, data)
