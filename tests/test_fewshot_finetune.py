"""Transfer by fine-tuning (``fewlabels fewshot --method finetune``): which parameters train,
that zero steps leave the Baseline's support classifier, and that only the chosen layers
move."""

import copy

import pytest
import torch
from torch import nn

from fewlabels.evaluate.features import extract_features
from fewlabels.fewshot import FewShotOptions
from fewlabels.fewshot.finetune import (
    fine_tuned,
    finetune_accuracies,
    layer_parameters,
    trainable_layers,
)
from fewlabels.fewshot.support_classifier import support_classifier_accuracies
from fewlabels.runs import make_backbone
from fewshot_tasks import tiny_task


def _network() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(),
                         nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5))


def test_layers_are_maps_with_their_normalisation_and_the_choice_takes_the_last_ones():
    network = _network()
    layers = layer_parameters(network)
    assert [len(layer) for layer in layers] == [4, 4, 2]  # conv w, b + bn w, b; ...; linear
    assert layers[0][2] is network[1].weight
    assert trainable_layers(network, "head") == []
    assert trainable_layers(network, "all") == list(network.parameters())
    assert trainable_layers(network, "1") == [network[8].weight, network[8].bias]
    assert len(trainable_layers(network, "2")) == 6
    assert len(trainable_layers(network, "9")) == 10  # more than there are: all of them


def test_zero_steps_give_the_baselines_support_classifier():
    """Fine-tuning starts from the Baseline's classifier on the frozen features: with no
    fine-tuning step every episode's accuracy is the Baseline rule's."""
    task = tiny_task(ways=3, shots=2, queries=2, episodes=4)
    torch.manual_seed(0)
    backbone = make_backbone(task.backbone, task.data).eval()
    options = FewShotOptions(finetune_steps=0, support_steps=30)
    tuned = finetune_accuracies(backbone, task, options)
    features = extract_features(backbone, task.novel.images, task.data.mean, task.data.std)
    baseline = support_classifier_accuracies(
        features, task.episodes, kind="linear", steps=30, learning_rate=options.support_lr,
        weight_decay=options.support_weight_decay)
    assert torch.equal(tuned, baseline)


@pytest.mark.parametrize("layers", ["head", "1", "all"])
def test_only_the_chosen_layers_and_never_the_given_network_change(layers):
    network, head = _network().eval(), nn.Linear(5, 5)
    before, head_before = copy.deepcopy(network.state_dict()), copy.deepcopy(head.state_dict())
    options = FewShotOptions(finetune_layers=layers, finetune_steps=3, finetune_lr=0.1)
    tuned, tuned_head = fine_tuned(network, head, torch.randn(10, 1, 8, 8), options,
                                   torch.Generator().manual_seed(0))
    for name, value in network.state_dict().items():  # the given network is untouched
        assert torch.equal(value, before[name]), name
    assert all(torch.equal(value, head_before[name]) for name, value in head.state_dict().items())
    moved = {name for name, value in tuned.state_dict().items()
             if not torch.equal(value, before[name])}
    expected = {"head": set(), "1": {"8.weight", "8.bias"},
                "all": {name for name, _ in network.named_parameters()}}[layers]
    assert moved == expected  # batch-norm statistics never move: eval mode
    assert not torch.equal(tuned_head.weight, head.weight)  # the classifier always trains
