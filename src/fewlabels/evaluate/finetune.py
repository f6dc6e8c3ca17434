"""The fine-tuning protocol: a pretrained backbone and a new linear classifier, all weights
trained on the budget's labeled images, tested on the test part.

For every budget and split seed, the ``supervised`` classifier method starts from the run's
evaluated network (its representation's weights, as `fewlabels finetune --init` does) and
trains on the engine's training loop (:func:`~fewlabels.semi.training.train_classifier`):
cross-entropy on FixMatch's weak augmentation (translation by up to 1/8 of the side, flip),
FixMatch's optimiser (SGD with Nesterov momentum, lr 0.03 for 64 images, weight decay 5e-4,
the cos(7πt/16) decay), batches of 64 labeled images cycling through the labeled set.
What is tested is the moving average of the weights, with a decay fitted to the run's
length (:func:`~fewlabels.semi.training.moving_average_decay`). The length is the
supervised baseline's rule (:func:`~fewlabels.evaluate.baselines.supervised_steps`: 30
passes over the labeled images, clamped to [200, 2000] steps), so fine-tuning and training
from scratch get the same number of steps at every budget.

FixMatch's recipe was measured against the supervised baseline's (AdamW, lr 2e-3 for batches
of min(128, N), weight decay 0.05, warm-up and cosine decay), both 200 steps from the 10-minute
SimCLR benchmark run on Fashion-MNIST, split seed 0: 59.8% against 47.6% test accuracy at 1
label per class, 74.3% against 74.1% at 10 (the linear probe on the frozen features: 62.5%
and 74.8%).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from fewlabels.data.imageset import ImageSet
from fewlabels.engine.recipe import TrainingRecipe
from fewlabels.errors import UserError
from fewlabels.evaluate.baselines import SupervisedModel, supervised_steps
from fewlabels.methods.base import DataInfo
from fewlabels.semi.base import FIXMATCH_RECIPE
from fewlabels.semi.training import TrainedClassifier, moving_average_decay, train_classifier

FINETUNE_RECIPE = FIXMATCH_RECIPE
FINETUNE_RECIPE_NOTE = ("FixMatch's recipe: SGD, Nesterov momentum 0.9, lr 0.03 for batches "
                        "of 64, weight decay 5e-4, cos(7πt/16) decay")


def finetune_steps(num_labeled: int, recipe: TrainingRecipe = FINETUNE_RECIPE) -> int:
    """The default length: :func:`supervised_steps` for the recipe's batch size (30 passes
    over the labeled images, clamped to [200, 2000] steps)."""
    return supervised_steps(num_labeled, recipe.batch_size)


def finetune(
    backbone_state: dict[str, torch.Tensor],
    backbone_spec: dict[str, Any],
    data: DataInfo,
    labeled: ImageSet,
    *,
    steps: int | None = None,
    recipe: TrainingRecipe = FINETUNE_RECIPE,
    ema_decay: float | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> SupervisedModel:
    """Fine-tune the backbone of ``backbone_spec`` started from ``backbone_state`` with a new
    linear classifier on ``labeled``; return the moving average of the weights (decay
    ``ema_decay``, by default fitted to the length) as a model that predicts, with its
    ``settings``. ``steps`` defaults to :func:`finetune_steps`; ``data`` holds the pretrained
    run's normalisation."""
    if labeled.labels is None or len(labeled) == 0:
        raise ValueError("fine-tuning needs labeled images")
    steps = steps if steps is not None else finetune_steps(len(labeled), recipe)
    options = {"ema_decay": moving_average_decay(steps) if ema_decay is None else ema_decay}
    trained = train_classifier(backbone_spec, data, labeled, method="supervised",
                               options=options, recipe=recipe, steps=steps,
                               init=backbone_state, seed=seed, device=device)
    return trained_model(trained, data, device, seed=seed, labeled=len(labeled))


def trained_model(trained: TrainedClassifier, data: DataInfo, device: str | torch.device,
                  **settings: Any) -> SupervisedModel:
    """A trained classifier (its moving average) as a model that predicts, in eval mode on
    ``device``, with the training's settings and ``settings`` attached (the protocols'
    rows record them)."""
    model = SupervisedModel(trained.network(), data.mean, data.std).to(torch.device(device))
    model.settings = {**trained.settings(), **settings, "from": "pretrained backbone"}
    return model.eval()


def finetune_protocol(
    backbone_state: dict[str, torch.Tensor],
    backbone_spec: dict[str, Any],
    data: DataInfo,
    *,
    steps: int | None = None,
    recipe: TrainingRecipe = FINETUNE_RECIPE,
    ema_decay: float | None = None,
    device: str | torch.device = "cpu",
) -> Callable[[ImageSet, int], SupervisedModel]:
    """The protocol as ``train(labeled, seed) -> model``, the form
    :func:`~fewlabels.evaluate.label_efficiency.evaluate_label_efficiency` takes (its
    ``finetune`` argument). Refuses at once a state that does not fit the backbone (a run
    whose evaluated network is not a plain backbone)."""
    check_backbone_state(backbone_state, backbone_spec, data)

    def train(labeled: ImageSet, seed: int) -> SupervisedModel:
        return finetune(backbone_state, backbone_spec, data, labeled, steps=steps,
                        recipe=recipe, ema_decay=ema_decay, seed=seed, device=device)

    return train


def check_backbone_state(state: dict[str, torch.Tensor], spec: dict[str, Any],
                         data: DataInfo) -> None:
    from fewlabels.runs import make_backbone  # runs imports the method packages

    try:
        make_backbone(spec, data).load_state_dict(state)
    except RuntimeError as error:
        raise UserError("this run's evaluated network is not a plain backbone, so it cannot "
                        "be fine-tuned; evaluate it with --protocol knn,linear") from error
