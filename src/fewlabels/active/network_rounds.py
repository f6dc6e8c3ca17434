"""Each active-learning round's classifier as a trained network (`fewlabels active simulate
--classifier finetune|semi`), instead of the linear probe on frozen features.

Every round starts again from the pretraining run's evaluated backbone (its weights, its
spec, its normalisation) and trains a classifier method on the engine's one training loop
(:func:`fewlabels.semi.training.train_classifier`):

- ``finetune``: the ``supervised`` method, the fine-tuning protocol's recipe
  (:mod:`fewlabels.evaluate.finetune`: FixMatch's SGD, weak augmentation, batches of 64
  cycling through the labeled images), on the labeled pool images and their revealed labels;
- ``semi``: a semi-supervised method (FixMatch by default) on those and on pool images
  without labels, with the semi protocol's protections of the pretrained start
  (:data:`SEMI_OPTIONS`: classifier head from a probe, backbone at a tenth of the learning
  rate). The unlabeled stream is a seeded random choice of pool images: ``unlabeled`` of
  them, by default as many as the round's steps see once (steps x mu x batch), since the
  engine rounds a length to whole passes over the stream and one pass over 60,000 images is
  133 FixMatch steps, minutes a round on a CPU.

The pool's labels are never given to the training, not even as the "hidden labels" a run
logs: what trains sees the labeled positions and the labels the oracle revealed for them.
The moving average of the weights (decay fitted to the length,
:func:`~fewlabels.semi.training.moving_average_decay`) is then read once over the pool and
once over the test images (:func:`~fewlabels.evaluate.features.extract_features`):
its backbone's features feed the strategies' distances, its head the probabilities
(:class:`~fewlabels.active.network_classifier.NetworkClassifier`, temperature 1: not
calibrated; the rounds report its expected calibration error).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fewlabels.active.network_classifier import (
    DEFAULT_POOL_BATCH,
    NETWORK_STRATEGIES,
    NetworkClassifier,
)
from fewlabels.active.simulate import RoundModel
from fewlabels.data.imageset import ImageSet
from fewlabels.errors import UserError
from fewlabels.evaluate.features import extract_features
from fewlabels.evaluate.linear_probe import FeaturePreprocessing
from fewlabels.evaluate.semi_protocol import SEMI_OPTIONS, parse_semi_options
from fewlabels.methods.base import DataInfo
from fewlabels.options import from_plain
from fewlabels.semi.registry import SEMI_METHODS
from fewlabels.semi.training import moving_average_decay, train_classifier

CLASSIFIERS = ("probe", "finetune", "semi")
DEFAULT_SEMI_METHOD = "fixmatch"
# Training steps per round, measured on the bench SimCLR ConvNet (Fashion-MNIST, one core
# shared with a 2-thread benchmark): fine-tuning, the fine-tuning protocol's shortest length
# (200 steps of 64 images), 8 s, plus 13 s for one pass over the 60,000 pool and 10,000 test
# images; FixMatch (64 + 448 images a step) took 1.2 s a step there (133 steps: 162 s), so
# semi gets 40 steps on the 17,920 unlabeled images they see once.
DEFAULT_STEPS = {"finetune": 200, "semi": 40}
TEMPERATURE_NOTE = ("temperature 1 (not fitted: a temperature fitted on the network's own "
                    "training images would be biased, and out-of-fold logits would need a "
                    "network per fold)")


def refuse_strategies(strategies: Sequence[str], classifier: str) -> None:
    """A one-line error for strategies a network classifier cannot serve (the committees)."""
    refused = [s for s in strategies if s not in NETWORK_STRATEGIES]
    if refused:
        raise UserError(f"--strategy {','.join(refused)} needs a committee of probes, which "
                        f"--classifier {classifier} has not; choose from "
                        f"{', '.join(NETWORK_STRATEGIES)}, or use --classifier probe")


@dataclass
class NetworkTraining:
    """How every round's network is trained: ``kind`` finetune or semi, the classifier
    ``method``, ``steps`` per round (rounded to whole passes by the engine), an optional
    wall-clock cap ``minutes`` per round, the method's ``options`` and, for semi, the size of
    the unlabeled stream (``None``: what the steps see once, :meth:`unlabeled_size`). Build
    it with :meth:`choose`."""

    kind: str
    method: str
    steps: int
    minutes: float | None = None
    options: dict[str, Any] = field(default_factory=dict)
    unlabeled: int | None = None

    @classmethod
    def choose(cls, kind: str, *, method: str | None = None, steps: int | None = None,
               minutes: float | None = None, option_texts: Sequence[str] = (),
               unlabeled: int | None = None) -> NetworkTraining:
        """The training of ``--classifier kind`` with its options, checked (one-line errors
        for a method, option or size that does not fit the kind)."""
        if kind not in ("finetune", "semi"):
            raise UserError(f"--classifier {kind}: a trained network is finetune or semi")
        if kind == "finetune":
            if method is not None:
                raise UserError("--classifier-method is for --classifier semi (finetune "
                                "trains the supervised method)")
            if unlabeled is not None:
                raise UserError("--classifier-unlabeled is for --classifier semi (finetune "
                                "trains on the labeled images only)")
            method = "supervised"
        else:
            method = method or DEFAULT_SEMI_METHOD
            chosen = SEMI_METHODS.get(method)
            if chosen.domain_adaptation or not hasattr(chosen.Config, "unlabeled_ratio"):
                valid = [name for name in SEMI_METHODS if not SEMI_METHODS.get(name)
                         .domain_adaptation and hasattr(SEMI_METHODS.get(name).Config,
                                                        "unlabeled_ratio")]
                raise UserError(f"--classifier-method {method} is not a semi-supervised "
                                f"method of one data set; choose one of: {', '.join(valid)}"
                                + (" (or --classifier finetune)" if method == "supervised"
                                   else ""))
        defaults = dict(SEMI_OPTIONS) if kind == "semi" else {}
        options = {**defaults, **parse_semi_options(method, option_texts, "--classifier-option")}
        steps = steps if steps is not None else DEFAULT_STEPS[kind]
        options.setdefault("ema_decay", moving_average_decay(steps))
        return cls(kind, method, steps, minutes, options, unlabeled)

    def unlabeled_size(self, pool_size: int) -> int | None:
        """How many pool images the semi-supervised stream holds (``None`` for finetune):
        ``unlabeled``, or steps x mu x batch, at most the pool."""
        if self.kind != "semi":
            return None
        if self.unlabeled is not None:
            return min(self.unlabeled, pool_size)
        chosen = SEMI_METHODS.get(self.method)
        ratio = self.options.get("unlabeled_ratio", from_plain(chosen.Config, {}).unlabeled_ratio)
        return min(pool_size, self.steps * int(ratio) * chosen.recipe.batch_size)

    def settings(self, init: str, network: str) -> dict[str, Any]:
        """How the rounds' networks were trained, for a results file: ``init`` is the run,
        ``network`` a description of the network they start from."""
        recipe = SEMI_METHODS.get(self.method).recipe
        return {
            "kind": self.kind, "method": self.method, "init": init,
            "steps_per_round": self.steps,
            "steps_rounding": "to whole passes over the labeled images (finetune) or the "
                              "unlabeled ones (semi)",
            "minutes_per_round": self.minutes, "options": dict(self.options),
            "recipe": {"optimizer": recipe.optimizer, "batch_size": recipe.batch_size,
                       "lr": recipe.learning_rate * recipe.batch_size / 256,
                       "weight_decay": recipe.weight_decay, "lr_decay": recipe.lr_decay},
            "unlabeled": (None if self.kind == "finetune" else
                          self.unlabeled or "steps x mu x batch pool images (seen once), "
                                            "a seeded random choice, without their labels"),
            "start": f"every round from {network}, with a new head",
            "tested": "moving average of the weights",
            "calibration": TEMPERATURE_NOTE,
        }


@dataclass
class NetworkRounds:
    """The ``fit_round`` of :func:`~fewlabels.active.simulate.simulate_curve` that trains a
    network each round (see the module docstring). ``pool_images`` and ``test_images`` are
    uint8 ``[N, C, H, W]``; no pool label is held here. ``trained`` lists every round's
    training settings (steps taken, seconds), in order."""

    training: NetworkTraining
    backbone_spec: dict[str, Any]
    init_state: dict[str, torch.Tensor] = field(repr=False)
    data: DataInfo
    pool_images: torch.Tensor = field(repr=False)
    test_images: torch.Tensor = field(repr=False)
    device: torch.device | str = "cpu"
    batch_size: int = DEFAULT_POOL_BATCH
    trained: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_run(cls, run_dir: str | Path, training: NetworkTraining, pool_images: torch.Tensor,
                 test_images: torch.Tensor, *, num_classes: int,
                 representation: str | None = None, device: torch.device | str = "cpu"
                 ) -> NetworkRounds:
        """Rounds that start from ``run_dir``'s evaluated network (``representation``): its
        backbone spec, weights and normalisation; ``num_classes`` is the data's (a class no
        label has revealed yet still gets its output). A network that is not a plain backbone
        is a one-line error."""
        from fewlabels.runs import load_pretrained, make_backbone  # runs imports semi
        from fewlabels.semi.classifier_run import backbone_state

        pretrained = load_pretrained(run_dir, representation)
        spec = pretrained.checkpoint["run"]["backbone"]
        data = dataclasses.replace(pretrained.data, num_classes=num_classes)
        state = backbone_state(pretrained.network)
        try:
            make_backbone(spec, data).load_state_dict(state)
        except RuntimeError as error:
            raise UserError(f"the evaluated network of {run_dir} ({pretrained.representation}) "
                            "is not a plain backbone, so it cannot be trained as a classifier; "
                            "use --classifier probe") from error
        return cls(training, spec, state, data, pool_images, test_images, device)

    def summary(self) -> dict[str, Any]:
        """The rounds trained so far: how many, the fewest and most steps taken, and the
        mean seconds of training a round."""
        if not self.trained:
            return {"rounds": 0}
        steps = [round_["steps"] for round_ in self.trained]
        seconds = sum(round_["seconds"] for round_ in self.trained) / len(self.trained)
        return {"rounds": len(steps), "steps": [min(steps), max(steps)],
                "mean_training_seconds": round(seconds, 2)}

    def unlabeled_images(self, seed: int) -> torch.Tensor | None:
        """The semi-supervised stream: a choice of :meth:`NetworkTraining.unlabeled_size`
        pool images drawn from ``seed`` (every pool image when that is all); ``None`` for
        fine-tuning."""
        size = self.training.unlabeled_size(len(self.pool_images))
        if size is None:
            return None
        if size >= len(self.pool_images):
            return self.pool_images
        generator = torch.Generator().manual_seed(seed)
        return self.pool_images[torch.randperm(len(self.pool_images), generator=generator)[:size]]

    def __call__(self, labeled: torch.Tensor, revealed: torch.Tensor, seed: int) -> RoundModel:
        """Train on the pool images at ``labeled`` with the ``revealed`` labels, read the
        pool and the test images through the trained network."""
        labeled = torch.as_tensor(labeled, dtype=torch.long)
        images = ImageSet(self.pool_images[labeled], torch.as_tensor(revealed).long())
        trained = train_classifier(
            self.backbone_spec, self.data, images, unlabeled=self.unlabeled_images(seed),
            method=self.training.method, options=self.training.options,
            steps=self.training.steps, budget_minutes=self.training.minutes,
            init=self.init_state, seed=seed, device=self.device)
        self.trained.append({"labels": len(labeled), "steps": trained.steps,
                             "seconds": round(trained.seconds, 2)})
        network = trained.network()
        mean, std = self.data.mean, self.data.std
        features = extract_features(network.backbone, self.pool_images, mean, std,
                                    batch_size=self.batch_size, device=self.device)
        test_features = extract_features(network.backbone, self.test_images, mean, std,
                                         batch_size=self.batch_size, device=self.device)
        classifier = NetworkClassifier.from_head(network.classifier)
        prepared = FeaturePreprocessing.fit(features)(features)
        return RoundModel(classifier, features, prepared, classifier.probabilities(test_features),
                          trained.recipe.weight_decay)
