"""Frozen features and the nearest class mean: a pretraining run's features (``features``,
with ``--init RUN``) and raw pixels (``pixels``, the floor any representation must beat).

Nothing trains: the novel images' features are extracted once (and cached in the run
folder), then every episode is the ProtoNet rule on rows of the feature table
(:func:`~fewlabels.fewshot.prototypes.nearest_mean_accuracies`). This measures whether
self-supervised features are competitive in the few-shot regime, as is often claimed
(e.g. Tian et al., "Rethinking Few-Shot Image Classification", ECCV 2020, for supervised
embeddings; the issue asks it of contrastive ones).
"""

from __future__ import annotations

import torch

from fewlabels.engine.checkpoint import checkpoint_path
from fewlabels.errors import UserError
from fewlabels.evaluate.baselines import RawPixels
from fewlabels.evaluate.features import BackboneFeatures, FeatureCache, file_digest
from fewlabels.fewshot.config import FewShotOptions
from fewlabels.fewshot.prototypes import nearest_mean_accuracies
from fewlabels.fewshot.registry import FEWSHOT_METHODS, MethodOutcome
from fewlabels.fewshot.task import FewShotTask


def run_features(task: FewShotTask) -> torch.Tensor:
    """The ``init`` run's features ``[M, D]`` of the novel images, through the run folder's
    feature cache (keyed by checkpoint digest, data, representation and the images)."""
    init = task.init
    if init is None:
        raise UserError("--method features evaluates a pretraining run's features; give "
                        "--init RUN (a fewlabels pretrain run folder)")
    cache = key = None
    if task.init_dir is not None:
        run_dir = task.init_dir if task.init_dir.is_dir() else task.init_dir.parent
        cache = FeatureCache(run_dir / "features")
        key = {"checkpoint": file_digest(checkpoint_path(task.init_dir)), "dataset": task.spec,
               "image_size": init.data.image_size, "representation": init.representation,
               "fewshot_novel": list(task.split.novel)}
    provider = BackboneFeatures(init.network, init.data.mean, init.data.std, cache=cache,
                                cache_key=key, device=task.device)
    return provider(task.novel, "fewshot-novel")


@FEWSHOT_METHODS.register("features", "nearest class mean on a pretraining run's frozen "
                                      "features (--init RUN)")
def features_method(task: FewShotTask, options: FewShotOptions) -> MethodOutcome:
    features = run_features(task)
    accuracies = nearest_mean_accuracies(features, task.episodes, options.feature_normalization)
    return MethodOutcome(accuracies, {"feature_dim": features.shape[1],
                                      "representation": task.init.representation,
                                      "feature_normalization": options.feature_normalization})


@FEWSHOT_METHODS.register("pixels", "nearest class mean on raw pixels (the floor)")
def pixels_method(task: FewShotTask, options: FewShotOptions) -> MethodOutcome:
    features = RawPixels(task.data.mean, task.data.std)(task.novel, "fewshot-novel")
    accuracies = nearest_mean_accuracies(features, task.episodes, options.feature_normalization)
    return MethodOutcome(accuracies, {"feature_dim": features.shape[1],
                                      "feature_normalization": options.feature_normalization})
