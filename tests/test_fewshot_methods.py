"""Few-shot methods against hand-computed numbers: Baseline++'s cosine logits, the support
classifiers, one MAML inner step (first and second order, with the Hessian term), MAML's
bounded memory and its batch-norm handling."""

import gc
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fewlabels.data.imageset import ImageSet
from fewlabels.fewshot import FewShotOptions
from fewlabels.fewshot import maml as maml_module
from fewlabels.fewshot.cosine import CosineClassifier, CosineSupervised, cosine_logits
from fewlabels.fewshot.maml import (
    MamlNetwork,
    adapted_query_logits,
    inner_adapt,
    maml_accuracies,
    meta_train,
)
from fewlabels.fewshot.support_classifier import fit_support_classifiers
from fewlabels.runs import backbone_spec, data_info, make_backbone
from fewlabels.semi.base import ClassifierConfig
from fewshot_tasks import tiny_task


def test_cosine_logits_by_hand():
    features = torch.tensor([[3.0, 4.0], [0.0, -2.0]])
    weight = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-1.0, -1.0]])
    # cosines: (3,4)/5 against (1,0), (0,1), -(1,1)/√2; (0,-1) likewise
    root = 2 ** 0.5
    expected = 10 * torch.tensor([[0.6, 0.8, -7 / 5 / root], [0.0, -1.0, 1 / root]])
    assert torch.allclose(cosine_logits(features, weight, 10.0), expected, atol=1e-6)
    classifier = CosineClassifier(2, 3, scale=10.0)
    with torch.no_grad():
        classifier.weight.copy_(weight)
    assert torch.allclose(classifier(features), expected, atol=1e-6)


def test_baseline_plus_plus_trains_a_cosine_classifier_and_averages_it():
    data = data_info(ImageSet(torch.zeros(4, 1, 8, 8, dtype=torch.uint8), None), 3)
    backbone = make_backbone(backbone_spec("convnet", 2, 1, 8, feature_dim=0), data)
    method = CosineSupervised(backbone, CosineSupervised.Config(cosine_scale=5.0), data)
    assert isinstance(method.classifier, CosineClassifier)
    assert isinstance(method.classifier_network().classifier, CosineClassifier)
    logits = method.logits(torch.randn(6, 1, 8, 8))
    assert logits.abs().max() <= 5.0 + 1e-5
    assert issubclass(CosineSupervised.Config, ClassifierConfig)


def test_support_classifiers_of_many_episodes_equal_each_fitted_alone():
    generator = torch.Generator().manual_seed(0)
    support = torch.randn(3, 2, 2, 4, generator=generator)  # 3 episodes, 2-way 2-shot
    support[:, 1] += 3.0  # class 1 is shifted: separable
    for kind in ("linear", "cosine"):
        together = fit_support_classifiers(
            support, kind=kind, steps=30, learning_rate=0.05, weight_decay=1e-3, scale=10.0,
            seeds=[4, 5, 6])
        last_alone = fit_support_classifiers(
            support[2:], kind=kind, steps=30, learning_rate=0.05, weight_decay=1e-3,
            scale=10.0, seeds=[6])
        assert torch.allclose(together.weight[2:], last_alone.weight, atol=1e-5)
        predicted = together.logits(support.flatten(1, 2)).argmax(-1)
        assert predicted.tolist() == [[0, 0, 1, 1]] * 3


def _tiny_linear_problem():
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.5, -0.2, 0.1], [0.3, 0.4, -0.6]]))
        model.bias.copy_(torch.tensor([0.1, -0.1]))
    support = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 1.5], [2.0, 0.5, -1.0]])
    support_labels = torch.tensor([0, 1, 1])
    query = torch.tensor([[0.5, 0.5, 0.5], [-1.0, 1.0, 2.0]])
    query_labels = torch.tensor([1, 0])
    return model, support, support_labels, query, query_labels


def _cross_entropy_gradient(weight, bias, images, labels):
    """By hand: d mean CE / d logits = (softmax − onehot) / n; dW = that^T x, db = its sum."""
    logits = images @ weight.T + bias
    residual = (logits.softmax(1) - F.one_hot(labels, 2).float()) / len(labels)
    return residual.T @ images, residual.sum(0)


@pytest.mark.parametrize("second_order", [False, True])
def test_one_maml_inner_step_equals_the_hand_computed_update(second_order):
    model, support, labels, _, _ = _tiny_linear_problem()
    parameters = dict(model.named_parameters())
    adapted = inner_adapt(model, parameters, {}, support, labels, steps=1, learning_rate=0.3,
                          second_order=second_order)
    weight_gradient, bias_gradient = _cross_entropy_gradient(
        model.weight.detach(), model.bias.detach(), support, labels)
    assert torch.allclose(adapted["weight"], model.weight - 0.3 * weight_gradient, atol=1e-6)
    assert torch.allclose(adapted["bias"], model.bias - 0.3 * bias_gradient, atol=1e-6)


def test_second_order_meta_gradient_adds_the_hessian_term_first_order_leaves_it_out():
    model, support, support_labels, query, query_labels = _tiny_linear_problem()
    rate = 0.5
    flat = torch.cat([model.weight.detach().flatten(), model.bias.detach()])

    def support_loss(vector):
        weight, bias = vector[:6].view(2, 3), vector[6:]
        return F.cross_entropy(support @ weight.T + bias, support_labels)

    hessian = torch.autograd.functional.hessian(support_loss, flat)  # [8, 8]
    weight_gradient, bias_gradient = _cross_entropy_gradient(
        model.weight.detach(), model.bias.detach(), support, support_labels)
    adapted_weight = model.weight.detach() - rate * weight_gradient
    adapted_bias = model.bias.detach() - rate * bias_gradient
    query_weight_gradient, query_bias_gradient = _cross_entropy_gradient(
        adapted_weight, adapted_bias, query, query_labels)
    query_gradient = torch.cat([query_weight_gradient.flatten(), query_bias_gradient])
    expected = {False: query_gradient,
                True: (torch.eye(8) - rate * hessian) @ query_gradient}
    results = {}
    for second_order in (False, True):
        parameters = dict(model.named_parameters())
        logits = adapted_query_logits(model, parameters, {}, support, support_labels, query,
                                      steps=1, learning_rate=rate, second_order=second_order)
        loss = F.cross_entropy(logits, query_labels)
        gradients = torch.autograd.grad(loss, list(parameters.values()))
        results[second_order] = torch.cat([gradients[0].flatten(), gradients[1]])
        assert torch.allclose(results[second_order], expected[second_order], atol=1e-6)
    # the Hessian term is not negligible here: the two orders really differ
    assert (results[True] - results[False]).abs().max() > 1e-3


@pytest.mark.parametrize("first_order", [False, True])
def test_maml_memory_stays_bounded_over_meta_steps(monkeypatch, first_order):
    """learn2learn#284: graphs kept across episodes grew memory until out-of-memory. Here
    the live tensors after meta-step 3 and after meta-step 12 are as many, and no gradient
    carries a graph."""
    task = tiny_task()
    network = MamlNetwork(task.new_backbone(), 2)
    counts, steps = [], []
    real_loop = maml_module.train_episodically

    def counting_loop(step, sampler, **kwargs):
        def counted_step(episodes):
            loss = step(episodes)
            steps.append(loss)
            if len(steps) in (3, 12):  # a scan of every object is slow: two of them
                gc.collect()
                with warnings.catch_warnings():  # deprecated torch names among the objects
                    warnings.simplefilter("ignore")
                    counts.append(sum(isinstance(thing, torch.Tensor)
                                      for thing in gc.get_objects()))
            return loss

        return real_loop(counted_step, sampler, **kwargs)

    monkeypatch.setattr(maml_module, "train_episodically", counting_loop)
    options = FewShotOptions(train_steps=12, inner_steps=2, meta_batch=2,
                             first_order=first_order)
    log = meta_train(network, task, options)
    assert log["steps"] == 12 and len(steps) == 12
    assert counts[0] == counts[1], counts
    assert all(parameter.grad is not None and parameter.grad.grad_fn is None
               for parameter in network.parameters())


def test_maml_test_episodes_change_neither_weights_nor_statistics_and_queries_do_not_mix():
    task = tiny_task()
    network = MamlNetwork(task.new_backbone(), 2)
    network.train()(task.normalized(task.base.images))  # running statistics off their start
    before = {name: value.clone() for name, value in network.state_dict().items()}
    accuracies = maml_accuracies(network, task, steps=3, learning_rate=0.1)
    assert accuracies.shape == (5,) and ((accuracies >= 0) & (accuracies <= 1)).all()
    for name, value in network.state_dict().items():
        assert torch.equal(value, before[name]), name
    # a query's logits do not depend on the other queries (eval-mode batch norm)
    support = task.normalized(task.novel.images[:2])
    queries = task.normalized(task.novel.images[2:6])

    def logits_of(query):
        parameters = {name: value.detach().requires_grad_(True)
                      for name, value in network.named_parameters()}
        buffers = {name: value.clone() for name, value in network.named_buffers()}
        return adapted_query_logits(network, parameters, buffers, support,
                                    torch.tensor([0, 1]), query, steps=1, learning_rate=0.1,
                                    second_order=False).detach()

    assert torch.allclose(logits_of(queries)[:1], logits_of(queries[:1]), atol=1e-5)
