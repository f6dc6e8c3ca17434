"""The semi-supervised protocol: a classifier method that learns from the budget's labeled
images and the train part's images without their labels, started from the pretrained
backbone, tested on the test part.

For every budget and split seed, a method of :data:`~fewlabels.semi.registry.SEMI_METHODS`
(FixMatch by default) starts from the run's evaluated network, as `fewlabels semi --init`
does, and trains on the engine's loop (:func:`~fewlabels.semi.training.train_classifier`)
with the method's own recipe (FixMatch's SGD and decay, μ = 7 unlabeled images per labeled
one) for a given number of steps, rounded to whole passes over the unlabeled pool. The
unlabeled pool is a seeded random choice of ``unlabeled`` train images (the split seed
chooses it), their labels never read. What is tested is the moving average of the weights,
its decay fitted to the length (:func:`~fewlabels.semi.training.moving_average_decay`).

The defaults protect what pretraining learned, which short runs need: the classifier
starts from a probe fitted to the labeled images' features (``head_init="probe"``) and the
backbone trains at a tenth of the classifier's learning rate (``backbone_lr_scale=0.1``);
see the benchmark notes in docs/benchmarks.md.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from fewlabels.data.imageset import ImageSet
from fewlabels.errors import UserError
from fewlabels.evaluate.baselines import SupervisedModel
from fewlabels.evaluate.finetune import check_backbone_state, trained_model
from fewlabels.methods.base import DataInfo
from fewlabels.options import field_types, parse_text
from fewlabels.semi.registry import SEMI_METHODS
from fewlabels.semi.training import moving_average_decay, train_classifier

SEMI_METHOD = "fixmatch"
SEMI_STEPS = 400
SEMI_OPTIONS: dict[str, Any] = {"backbone_lr_scale": 0.1, "head_init": "probe"}


def parse_semi_options(method: str, texts: Sequence[str], flag: str = "--semi-option"
                       ) -> dict[str, Any]:
    """Method options given as ``NAME=VALUE`` texts (``backbone-lr-scale=0``), parsed with
    the method's option types; an unknown name or a bad value is a one-line error naming the
    command-line ``flag`` they came from."""
    types = field_types(SEMI_METHODS.get(method).Config)
    options: dict[str, Any] = {}
    for text in texts:
        name, separator, value = text.partition("=")
        key = name.strip().removeprefix("--").replace("-", "_")
        if not separator or key not in types:
            valid = ", ".join(sorted(name.replace("_", "-") for name in types))
            raise UserError(f"{flag} {text!r}: give NAME=VALUE with a {method} option "
                            f"name, one of: {valid}")
        try:
            options[key] = parse_text(types[key], value)
        except ValueError as error:
            raise UserError(f"{flag} {text!r}: {error}") from None
    return options


def semi_protocol_note(method: str, steps: int, unlabeled: int | None,
                       options: dict[str, Any]) -> str:
    """One line for the table's notes: how the semi row was trained."""
    pool = f"{unlabeled:,} unlabeled train images" if unlabeled else "every train image"
    chosen = ", ".join(f"{name.replace('_', '-')} {value}" for name, value in options.items())
    return (f"{method} from the pretrained backbone on the labels and {pool}, its own "
            f"recipe, about {steps} steps, {chosen}; moving average of the weights tested")


def unlabeled_pool(train: ImageSet, size: int | None, seed: int) -> torch.Tensor:
    """uint8 images of a seeded random choice of ``size`` train images (all when None)."""
    if size is None or size >= len(train):
        return train.images
    generator = torch.Generator().manual_seed(seed)
    return train.images[torch.randperm(len(train), generator=generator)[:size]]


def semi_protocol(
    backbone_state: dict[str, torch.Tensor],
    backbone_spec: dict[str, Any],
    data: DataInfo,
    train: ImageSet,
    *,
    method: str = SEMI_METHOD,
    steps: int = SEMI_STEPS,
    unlabeled: int | None = None,
    options: dict[str, Any] | None = None,
    device: str | torch.device = "cpu",
) -> Callable[[ImageSet, int], SupervisedModel]:
    """The protocol as ``train(labeled, seed) -> model``, the form
    :func:`~fewlabels.evaluate.label_efficiency.evaluate_label_efficiency` takes. ``train``
    is the train part whose images (without labels) form the unlabeled pool; ``options``
    are the method's (default :data:`SEMI_OPTIONS`)."""
    check_backbone_state(backbone_state, backbone_spec, data)
    SEMI_METHODS.get(method)  # an unknown name fails now, in one line
    chosen = {**SEMI_OPTIONS, **(options or {})}
    chosen.setdefault("ema_decay", moving_average_decay(steps))

    def fit(labeled: ImageSet, seed: int) -> SupervisedModel:
        trained = train_classifier(backbone_spec, data, labeled, method=method,
                                   unlabeled=unlabeled_pool(train, unlabeled, seed),
                                   options=chosen, steps=steps, init=backbone_state,
                                   seed=seed, device=device)
        return trained_model(trained, data, device, seed=seed, labeled=len(labeled),
                             unlabeled=unlabeled or len(train),
                             **{name: value for name, value in chosen.items()
                                if name != "ema_decay"})

    return fit
