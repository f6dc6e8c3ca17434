"""The nearest-class-mean rule of Prototypical Networks, on feature tables.

Snell, Swersky & Zemel, "Prototypical Networks for Few-shot Learning", NeurIPS 2017: a class's
prototype is the mean of its support embeddings, ``c_n = 1/K Σ_k f(x_nk)``, and a query ``x``
gets the logits ``−‖f(x) − c_n‖²``; its class is the nearest prototype. The same rule serves
frozen features of any network (a pretraining run, raw pixels), where it is the "nearest
class mean" classifier.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from fewlabels.fewshot.episodes import Episodes, episode_accuracies

FeatureNormalization = Literal["none", "l2"]
EPISODES_PER_CHUNK = 100  # bounds the [chunk, N·Q, D] query tables at any episode count


def prototypes(support: torch.Tensor) -> torch.Tensor:
    """Class means ``[..., N, D]`` of support embeddings ``[..., N, K, D]``."""
    return support.mean(dim=-2)


def prototype_logits(query: torch.Tensor, class_means: torch.Tensor) -> torch.Tensor:
    """ProtoNet logits ``−‖q − c_n‖²`` ``[..., M, N]`` of queries ``[..., M, D]`` against
    class means ``[..., N, D]`` (Snell et al. 2017, eq. 2). Expanded as
    ``2 q·c − ‖q‖² − ‖c‖²`` so a batch of episodes is one batched matrix product."""
    cross = query @ class_means.transpose(-1, -2)
    return 2 * cross - query.square().sum(-1, keepdim=True) \
        - class_means.square().sum(-1).unsqueeze(-2)


def prototype_loss(support: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """The episodic training loss of Prototypical Networks (Snell et al. 2017, eq. 2–3):

        L = −1/(N·Q) Σ_{n,q} log softmax_n(−‖f(x_nq) − c_n‖²),  c_n = 1/K Σ_k f(x_nk),

    for support embeddings ``[N, K, D]`` and query embeddings ``[N, Q, D]`` of one episode
    (query ``x_nq`` belongs to class ``n``)."""
    ways, queries = query.shape[0], query.shape[1]
    logits = prototype_logits(query.reshape(ways * queries, -1), prototypes(support))
    labels = torch.arange(ways, device=query.device).repeat_interleave(queries)
    return F.cross_entropy(logits, labels)


def normalized_features(features: torch.Tensor, normalization: FeatureNormalization
                        ) -> torch.Tensor:
    """Features as the nearest-mean rule compares them: as they are (``none``) or scaled to
    unit length (``l2``; SimpleShot, Wang et al. 2019, found it helps nearest-mean rules, and
    contrastive features are trained on the unit sphere)."""
    if normalization == "l2":
        return F.normalize(features, dim=-1)
    if normalization != "none":
        raise ValueError(f"unknown feature normalization {normalization!r}")
    return features


@torch.no_grad()
def nearest_mean_accuracies(features: torch.Tensor, episodes: Episodes,
                            normalization: FeatureNormalization = "none") -> torch.Tensor:
    """Per-episode accuracy ``[E]`` of the nearest class mean on a feature table ``[M, D]``
    that the episodes index: no network runs, only indexing and batched matrix products,
    ``EPISODES_PER_CHUNK`` episodes at a time."""
    features = normalized_features(features.float(), normalization)
    accuracies = []
    for start in range(0, len(episodes), EPISODES_PER_CHUNK):
        chunk = episodes.chunk(start, start + EPISODES_PER_CHUNK)
        class_means = prototypes(features[chunk.support])  # [E, N, D]
        query = features[chunk.query].flatten(1, 2)  # [E, N·Q, D]
        accuracies.append(episode_accuracies(prototype_logits(query, class_means), chunk))
    return torch.cat(accuracies)
