"""Episodic training on two gloo processes equals one process on both processes' episodes:
ProtoNet and MAML (second order) take the same optimiser steps, and both processes end with
the same network (batch-norm statistics averaged)."""


import torch

from fewlabels.fewshot.config import FewShotOptions
from fewlabels.fewshot.maml import MamlNetwork, meta_train
from fewlabels.fewshot.protonet import train_protonet
from fewshot_tasks import tiny_task
from gloo_processes import run_on_processes

STEPS = 3


def _train(method: str, episodes_per_step: int) -> dict[str, torch.Tensor]:
    """The state after STEPS steps of ``method`` with ``episodes_per_step`` episodes per
    process, from the same initial weights."""
    task = tiny_task(ways=2, shots=1, queries=2)
    torch.manual_seed(3)
    if method == "protonet":
        network = task.new_backbone().train()
        train_protonet(network, task, FewShotOptions(train_steps=STEPS, learning_rate=0.01),
                       ways=2, episodes_per_step=episodes_per_step)
    else:
        network = MamlNetwork(task.new_backbone(), 2)
        # MAML tests each training episode's queries in eval mode, on running statistics its
        # own and (on one process) the earlier episodes' inner steps moved: frozen here, so
        # that one process's second episode sees what the second process sees
        for module in network.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.momentum = 0.0
        meta_train(network, task, FewShotOptions(train_steps=STEPS, learning_rate=0.01,
                                                 inner_steps=1, meta_batch=episodes_per_step))
    return {name: value.detach().clone() for name, value in network.state_dict().items()}


def _train_both(rank: int, world: int, out_dir: str) -> None:  # noqa: ARG001
    for method in ("protonet", "maml"):
        torch.save(_train(method, 1), f"{out_dir}/{method}{rank}.pt")


def test_two_processes_take_the_steps_of_one_on_all_their_episodes(tmp_path):
    run_on_processes(_train_both, tmp_path)
    for method in ("protonet", "maml"):
        ranks = [torch.load(tmp_path / f"{method}{rank}.pt") for rank in range(2)]
        single = _train(method, 2)
        start = _initial(method)
        for name, value in single.items():
            # both processes hold the same network, batch-norm statistics included
            torch.testing.assert_close(ranks[0][name], ranks[1][name], rtol=0, atol=0)
            if name.endswith(("running_mean", "running_var", "num_batches_tracked")):
                continue  # one process updates them episode by episode, two average theirs
            torch.testing.assert_close(ranks[0][name], value, rtol=1e-4, atol=1e-6,
                                       msg=f"{method} {name}")
        # the weights moved: the comparison is not between two untouched networks
        assert any(not torch.allclose(single[name], start[name]) for name in start
                   if "running" not in name and "num_batches" not in name)


def _initial(method: str) -> dict[str, torch.Tensor]:
    task = tiny_task(ways=2, shots=1, queries=2)
    torch.manual_seed(3)
    network = (task.new_backbone() if method == "protonet"
               else MamlNetwork(task.new_backbone(), 2))
    return {name: value.detach().clone() for name, value in network.state_dict().items()}
