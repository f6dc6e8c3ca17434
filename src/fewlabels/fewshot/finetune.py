"""Transfer by fine-tuning: a pretrained network adapted to each episode's support images.

Where the network comes from is the comparison the method serves:

- with ``--init RUN``: a self-supervised run's network, pretrained on every image without
  labels (no base-class training);
- without: supervised training on the base classes (Baseline's, :mod:`fewlabels.fewshot.
  baseline`), the transfer of "A Closer Look at Few-shot Classification" (Chen et al. 2019).

Each episode then starts from a copy of that network and

1. fits a new linear classifier to the support images' frozen features (the Baseline's
   support classifier, :func:`~fewlabels.fewshot.support_classifier.fit_support_classifiers`);
2. trains it together with the backbone's last ``--finetune-layers`` layers (``all``: the
   whole backbone, ``head``: none) for ``--finetune-steps`` full-batch Adam steps on the
   support images (a random shift and flip per step), the backbone at ``--finetune-lr``,
   the classifier at ``--support-lr``;
3. classifies the query images.

Fitting the classifier first and fine-tuning after (LP-FT, Kumar et al. 2022, "Fine-Tuning
can Distort Pretrained Features and Underperform Out-of-Distribution") keeps a random head's
large early gradients from rewriting the pretrained features on a handful of images; with
``head`` the method is the Baseline's rule with more steps. Batch normalisation stays in eval
mode (running statistics of the pretraining): a 1-shot support batch has five images, too few
for batch statistics, and a query's prediction never depends on the other queries.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fewlabels.augment.geometric import translate_and_flip
from fewlabels.evaluate.features import extract_features
from fewlabels.fewshot.baseline import train_on_base_classes
from fewlabels.fewshot.config import FewShotOptions
from fewlabels.fewshot.episodes import Episodes, episode_accuracies
from fewlabels.fewshot.registry import FEWSHOT_METHODS, MethodOutcome
from fewlabels.fewshot.support_classifier import fit_support_classifiers
from fewlabels.fewshot.task import FewShotTask

LAYER_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


def layer_parameters(network: nn.Module) -> list[list[nn.Parameter]]:
    """The network's parameters by layer, in the order the modules are declared: a layer is
    a convolution or linear map with the normalisation layers declared after it; any other
    module with parameters of its own (a ViT's position embedding, ...) is a layer alone."""
    layers: list[list[nn.Parameter]] = []
    for module in network.modules():
        own = list(module.parameters(recurse=False))
        if not own:
            continue
        if isinstance(module, NORM_TYPES) and layers:
            layers[-1].extend(own)
        else:
            layers.append(own)
    return layers


def trainable_layers(network: nn.Module, choice: str) -> list[nn.Parameter]:
    """The parameters ``--finetune-layers`` trains: ``all``, ``head`` (none of the
    backbone's) or the last N layers of :func:`layer_parameters`."""
    if choice == "all":
        return list(network.parameters())
    if choice == "head":
        return []
    return [parameter for layer in layer_parameters(network)[-int(choice):]
            for parameter in layer]


def fine_tuned(backbone: nn.Module, head: nn.Linear, support: torch.Tensor,
               options: FewShotOptions, generator: torch.Generator
               ) -> tuple[nn.Module, nn.Linear]:
    """Copies of ``backbone`` (eval mode) and ``head`` fine-tuned on the normalised
    ``support`` images ``[N·K, C, H, W]`` (class ``n``'s ``K`` images in a row, label
    ``n``); the originals are left as they were."""
    network = copy.deepcopy(backbone).eval()
    head = copy.deepcopy(head)
    network.requires_grad_(False)
    layers = trainable_layers(network, options.finetune_layers)
    for parameter in layers:
        parameter.requires_grad_(True)
    groups: list[dict[str, Any]] = [{"params": list(head.parameters()), "lr": options.support_lr}]
    if layers:
        groups.append({"params": layers, "lr": options.finetune_lr})
    optimizer = torch.optim.Adam(groups)
    shots = len(support) // head.out_features
    labels = torch.arange(head.out_features, device=support.device).repeat_interleave(shots)
    shift = max(1, support.shape[-1] // 8)
    with torch.enable_grad():
        for _ in range(options.finetune_steps):
            views = translate_and_flip(support, max_shift=shift, flip=True, generator=generator)
            loss = F.cross_entropy(head(network(views)), labels)
            loss = loss + options.support_weight_decay / 2 * head.weight.square().sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return network, head


def finetune_accuracies(backbone: nn.Module, task: FewShotTask, options: FewShotOptions
                        ) -> torch.Tensor:
    """Per-episode query accuracy ``[E]`` after :func:`fine_tuned` on each episode's
    support images, every episode from the same ``backbone``."""
    episodes: Episodes = task.episodes
    backbone = backbone.to(task.device).eval()
    features = extract_features(backbone, task.novel.images, task.data.mean, task.data.std,
                                device=task.device)
    heads = fit_support_classifiers(
        features[episodes.support], kind="linear", steps=options.support_steps,
        learning_rate=options.support_lr, weight_decay=options.support_weight_decay)
    accuracies = []
    for index in range(len(episodes)):
        episode = episodes.chunk(index, index + 1)
        head = nn.Linear(features.shape[1], episodes.ways).to(task.device)
        with torch.no_grad():
            head.weight.copy_(heads.weight[index])
            head.bias.copy_(heads.bias[index])
        generator = torch.Generator().manual_seed(task.seed * len(episodes) + index)
        support = task.normalized(task.novel.images[episode.support.flatten()])
        query = task.normalized(task.novel.images[episode.query.flatten()])
        network, head = fine_tuned(backbone, head, support, options, generator)
        with torch.no_grad():
            logits = head(network(query))  # [N·Q, N]
        accuracies.append(episode_accuracies(logits[None], episode))
    return torch.cat(accuracies)


@FEWSHOT_METHODS.register("finetune", "transfer: a new classifier and the backbone's last "
                                      "layers fine-tuned on each support set, from a "
                                      "pretraining run (--init) or from supervised training "
                                      "on the base classes")
def finetune(task: FewShotTask, options: FewShotOptions) -> MethodOutcome:
    settings: dict[str, Any] = {"layers": options.finetune_layers,
                                "steps": options.finetune_steps,
                                "backbone_lr": options.finetune_lr,
                                "classifier_lr": options.support_lr}
    if task.init is not None:
        backbone = copy.deepcopy(task.init.network)
        settings["from"] = "pretraining run (no base-class training)"
    else:
        backbone, settings["training"] = train_on_base_classes(task, options, "linear")
        settings["from"] = "supervised training on the base classes"
    return MethodOutcome(finetune_accuracies(backbone, task, options), settings)
