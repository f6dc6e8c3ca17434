"""Evaluation protocols that judge a representation: feature extraction and caching, weighted
kNN, linear probe, baselines (raw pixels, random initialisation, supervised from scratch),
label-efficiency curves over budgets of labels per class, and the clustering protocol (NMI,
ARI, Hungarian-matched accuracy of k-means on the features and of a method's own clusters).

Typical use::

    provider = BackboneFeatures(backbone, mean, std, cache=FeatureCache(run_dir / "features"),
                                cache_key={"checkpoint": file_digest(path), "dataset": spec})
    results = evaluate_label_efficiency({"simclr": provider, "pixels": RawPixels(mean, std)},
                                        bundle.train, bundle.test)
    print(results.table()); results.save_json(run_dir / "label_efficiency.json")
"""

from fewlabels.evaluate.baselines import (
    RawPixels,
    SupervisedModel,
    random_init_backbone,
    raw_pixel_features,
    supervised_baseline,
    supervised_steps,
    train_supervised,
)
from fewlabels.evaluate.clusters import (
    ClusterResults,
    ClusterRow,
    HeadClusters,
    evaluate_clusters,
)
from fewlabels.evaluate.features import (
    BackboneFeatures,
    FeatureCache,
    FeatureProvider,
    extract_features,
    file_digest,
)
from fewlabels.evaluate.knn import knn_accuracy, knn_predict
from fewlabels.evaluate.label_efficiency import PROTOCOLS, evaluate_label_efficiency
from fewlabels.evaluate.linear_probe import (
    DEFAULT_PREPROCESSING,
    DEFAULT_WEIGHT_DECAY,
    DEFAULT_WEIGHT_DECAYS,
    FeaturePreprocessing,
    ProbeResult,
    feature_statistics,
    linear_probe,
)
from fewlabels.evaluate.table import Cell, Results, budget_label, format_table

__all__ = [
    "DEFAULT_PREPROCESSING",
    "DEFAULT_WEIGHT_DECAY",
    "DEFAULT_WEIGHT_DECAYS",
    "PROTOCOLS",
    "BackboneFeatures",
    "Cell",
    "ClusterResults",
    "ClusterRow",
    "FeatureCache",
    "FeaturePreprocessing",
    "FeatureProvider",
    "HeadClusters",
    "ProbeResult",
    "RawPixels",
    "Results",
    "SupervisedModel",
    "budget_label",
    "evaluate_clusters",
    "evaluate_label_efficiency",
    "extract_features",
    "feature_statistics",
    "file_digest",
    "format_table",
    "knn_accuracy",
    "knn_predict",
    "linear_probe",
    "random_init_backbone",
    "raw_pixel_features",
    "supervised_baseline",
    "supervised_steps",
    "train_supervised",
]
