"""Model-Agnostic Meta-Learning (Finn, Abbeel & Levine, ICML 2017), second- and first-order.

For a task with support set S and query set Q, the network's parameters θ are adapted by a few
gradient steps on the support loss, and the meta-objective is the query loss after them:

    θ'_0 = θ,   θ'_{i+1} = θ'_i − α ∇ L_S(θ'_i)   (i < inner steps),
    min_θ Σ_tasks L_Q(θ'),

optimised by Adam with learning rate β (the outer rate). The second-order meta-gradient
differentiates through the inner steps (for one step, ``(I − α ∇²L_S(θ)) ∇L_Q(θ')``); the
first-order one (FOMAML) treats the inner gradients as constants, giving ``∇L_Q(θ')``. The
network is called functionally (``torch.func.functional_call``) with the adapted parameters,
so the module's own parameters stay θ.

Memory stays bounded over episodes (learn2learn#284, #278 grew until out of memory): each
task's query loss is backpropagated as soon as it is computed, so at most one task's graph is
alive, and no adapted tensor outlives its step.

Batch norm: the support passes of the inner loop use the support set's batch statistics (and
update the running statistics while meta-training); the query is always classified in eval
mode, with the running statistics, at meta-training as at test time, so a query's prediction
never depends on the other queries (LearningToCompare_FSL#48). At test time the inner loop
runs on copies of the running statistics, so no episode changes the next one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from fewlabels.distributed import average_float_buffers, average_gradients
from fewlabels.fewshot.config import FewShotOptions
from fewlabels.fewshot.episodes import Episodes
from fewlabels.fewshot.episodic_training import train_episodically
from fewlabels.fewshot.protonet import base_sampler
from fewlabels.fewshot.registry import FEWSHOT_METHODS, MethodOutcome
from fewlabels.fewshot.task import FewShotTask

Tensors = dict[str, torch.Tensor]


class MamlNetwork(nn.Module):
    """A backbone and an N-way linear head, the network MAML adapts as a whole."""

    def __init__(self, backbone: nn.Module, ways: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(int(backbone.feature_dim), ways)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images))


def inner_adapt(network: nn.Module, parameters: Tensors, buffers: Tensors,
                images: torch.Tensor, labels: torch.Tensor, *, steps: int,
                learning_rate: float, second_order: bool) -> Tensors:
    """MAML's inner loop: ``steps`` times ``θ ← θ − α ∇_θ CE(network_θ(images), labels)``,
    in the network's current mode. With ``second_order`` the steps stay differentiable
    (``create_graph``); without, their gradients are constants (first-order MAML)."""
    for _ in range(steps):
        logits = functional_call(network, (parameters, buffers), (images,))
        loss = F.cross_entropy(logits, labels)
        gradients = torch.autograd.grad(loss, list(parameters.values()),
                                        create_graph=second_order)
        parameters = {name: value - learning_rate * gradient
                      for (name, value), gradient in zip(parameters.items(), gradients,
                                                         strict=True)}
    return parameters


def adapted_query_logits(network: nn.Module, parameters: Tensors, buffers: Tensors,
                         support: torch.Tensor, support_labels: torch.Tensor,
                         query: torch.Tensor, *, steps: int, learning_rate: float,
                         second_order: bool) -> torch.Tensor:
    """Query logits after adapting ``parameters`` on the support set: support passes in
    training mode (support batch statistics), the query pass in eval mode (running
    statistics). The network's mode is restored."""
    was_training = network.training
    try:
        network.train()
        adapted = inner_adapt(network, parameters, buffers, support, support_labels,
                              steps=steps, learning_rate=learning_rate,
                              second_order=second_order)
        network.eval()
        return functional_call(network, (adapted, buffers), (query,))
    finally:
        network.train(was_training)


def meta_train(network: MamlNetwork, task: FewShotTask, options: FewShotOptions
               ) -> dict[str, float]:
    """Meta-train ``network`` on episodes of the base classes: per outer step,
    ``meta_batch`` tasks per device, each backpropagated at once (one graph alive at a time),
    the gradients averaged over devices, then one Adam step on the mean query loss. Batch-norm
    running statistics are averaged over devices at the end."""
    ways = network.head.out_features
    sampler = base_sampler(task, ways)
    optimizer = torch.optim.Adam(network.parameters(), lr=options.learning_rate)
    support_labels = torch.arange(ways, device=task.device).repeat_interleave(sampler.shots)
    query_labels = torch.arange(ways, device=task.device).repeat_interleave(sampler.queries)

    def step(episodes: Episodes) -> float:
        optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for episode in range(len(episodes)):
            support = task.normalized(task.base.images[episodes.support[episode].flatten()])
            query = task.normalized(task.base.images[episodes.query[episode].flatten()])
            logits = adapted_query_logits(
                network, dict(network.named_parameters()), dict(network.named_buffers()),
                support, support_labels, query, steps=options.inner_steps,
                learning_rate=options.inner_lr, second_order=not options.first_order)
            loss = F.cross_entropy(logits, query_labels) / len(episodes)
            loss.backward()
            total += loss.item()
        average_gradients(network.parameters())
        optimizer.step()
        return total

    steps, minutes = options.training_length()
    log = train_episodically(step, sampler, episodes_per_step=options.meta_batch, steps=steps,
                             minutes=minutes, seed=task.seed, device=task.device)
    average_float_buffers(network)
    return log.to_dict()


def maml_accuracies(network: MamlNetwork, task: FewShotTask, steps: int,
                    learning_rate: float) -> torch.Tensor:
    """Per-episode accuracy ``[E]`` on the task's novel episodes: for each, ``steps``
    first-order inner steps from the meta-learned weights on its support set (on copies of
    the running statistics), then its queries in eval mode."""
    episodes = task.episodes
    support_labels = episodes.support_labels().to(task.device)
    query_labels = episodes.query_labels().to(task.device)
    accuracies = torch.empty(len(episodes))
    for episode in range(len(episodes)):
        support = task.normalized(task.novel.images[episodes.support[episode].flatten()])
        query = task.normalized(task.novel.images[episodes.query[episode].flatten()])
        parameters = {name: value.detach().requires_grad_(True)
                      for name, value in network.named_parameters()}
        buffers = {name: value.clone() for name, value in network.named_buffers()}
        with torch.enable_grad():
            logits = adapted_query_logits(network, parameters, buffers, support,
                                          support_labels, query, steps=steps,
                                          learning_rate=learning_rate, second_order=False)
        accuracies[episode] = (logits.argmax(1) == query_labels).float().mean().item()
    return accuracies


@FEWSHOT_METHODS.register("maml", "MAML: meta-learned initialisation adapted by gradient steps "
                                  "on each support set (--first-order for FOMAML)")
def maml(task: FewShotTask, options: FewShotOptions) -> MethodOutcome:
    ways = task.episodes.ways
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(task.seed)
        network = MamlNetwork(task.new_backbone(), ways).to(task.device)
        training = meta_train(network, task, options)
    accuracies = maml_accuracies(network, task, options.test_inner_steps, options.inner_lr)
    return MethodOutcome(accuracies, {
        "training": training, "order": "first" if options.first_order else "second",
        "inner_steps": options.inner_steps, "test_inner_steps": options.test_inner_steps,
        "inner_lr": options.inner_lr, "outer_lr": options.learning_rate,
        "meta_batch": options.meta_batch,
        "init": None if task.init_dir is None else str(task.init_dir)})
