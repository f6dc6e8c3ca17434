"""Prototypical Networks (Snell, Swersky & Zemel, NeurIPS 2017).

Training: episodes of base classes; the backbone embeds support and query images together
(batch norm in training mode, over the episode), prototypes are the support means and the loss
is the cross-entropy of ``−‖f(x) − c_n‖²`` (:func:`~fewlabels.fewshot.prototypes.prototype_loss`),
optimised with Adam at a constant rate.

Evaluation: the trained backbone is frozen and in eval mode, so batch norm uses the running
statistics of training: a query's embedding does not depend on the other queries
(LearningToCompare_FSL#48 leaked query statistics through batch norm in training mode). The
novel images are embedded once and every episode is the nearest class mean on the table.
"""

from __future__ import annotations

import torch

from fewlabels.distributed import average_float_buffers, average_gradients
from fewlabels.evaluate.features import extract_features
from fewlabels.fewshot.config import FewShotOptions
from fewlabels.fewshot.episodes import Episodes, EpisodeSampler
from fewlabels.fewshot.episodic_training import EpisodicLog, train_episodically
from fewlabels.fewshot.prototypes import nearest_mean_accuracies, prototype_loss
from fewlabels.fewshot.registry import FEWSHOT_METHODS, MethodOutcome
from fewlabels.fewshot.task import FewShotTask


def base_sampler(task: FewShotTask, ways: int) -> EpisodeSampler:
    """Episodes of the base part (labels ``0..B-1``), with the evaluation's shots and
    queries."""
    return EpisodeSampler(task.base.labels, range(len(task.split.base)), ways,
                          task.episodes.shots, task.episodes.queries, what="base")


def train_protonet(backbone: torch.nn.Module, task: FewShotTask, options: FewShotOptions,
                   ways: int, episodes_per_step: int = 1) -> EpisodicLog:
    """Episodic training of ``backbone`` on the base classes: ``episodes_per_step``
    ``ways``-way episodes per device and step (one, as in the paper), the mean over them of
    the loss of each episode's queries against its prototypes, gradients averaged over
    devices, Adam. Batch-norm running statistics are averaged over devices at the end, so
    every device holds the same network."""
    sampler = base_sampler(task, ways)
    optimizer = torch.optim.Adam(backbone.parameters(), lr=options.learning_rate)
    shots, queries = sampler.shots, sampler.queries

    def step(episodes: Episodes) -> float:
        optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for episode in range(len(episodes)):
            support, query = episodes.support[episode], episodes.query[episode]  # [N,K], [N,Q]
            images = task.base.images[torch.cat([support.flatten(), query.flatten()])]
            embeddings = backbone(task.normalized(images))  # [N·K + N·Q, D]
            loss = prototype_loss(embeddings[:ways * shots].view(ways, shots, -1),
                                  embeddings[ways * shots:].view(ways, queries, -1))
            (loss / len(episodes)).backward()
            total += loss.item() / len(episodes)
        average_gradients(backbone.parameters())
        optimizer.step()
        return total

    steps, minutes = options.training_length()
    log = train_episodically(step, sampler, episodes_per_step=episodes_per_step, steps=steps,
                             minutes=minutes, seed=task.seed, device=task.device)
    average_float_buffers(backbone)
    return log


@FEWSHOT_METHODS.register("protonet", "Prototypical Networks: episodic training, class means, "
                                      "squared Euclidean distance")
def protonet(task: FewShotTask, options: FewShotOptions) -> MethodOutcome:
    backbone = task.new_backbone().to(task.device).train()
    ways = options.train_ways or min(task.episodes.ways, len(task.split.base))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(task.seed)
        log = train_protonet(backbone, task, options, ways)
    features = extract_features(backbone, task.novel.images, task.data.mean, task.data.std,
                                device=task.device)
    accuracies = nearest_mean_accuracies(features, task.episodes, options.feature_normalization)
    return MethodOutcome(accuracies, {
        "training": log.to_dict(), "train_ways": ways, "learning_rate": options.learning_rate,
        "feature_normalization": options.feature_normalization,
        "init": None if task.init_dir is None else str(task.init_dir)})
