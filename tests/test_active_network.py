"""A fine-tuned or semi-supervised network as the classifier of every active-learning round:
its pool probabilities are the network's softmax, it trains on revealed labels only, and
`fewlabels active simulate --classifier finetune` records how it was trained."""

import json

import pytest
import torch

import fewlabels.active.network_rounds as network_rounds
import fewlabels.active.simulate as simulate_module
from fewlabels.active.network_classifier import NetworkClassifier
from fewlabels.active.network_rounds import NetworkRounds, NetworkTraining
from fewlabels.active.pool import run_features
from fewlabels.active.simulate import simulate_curve
from fewlabels.augment.convert import normalize, to_float
from fewlabels.cli import main
from fewlabels.data.labeled import train_and_test
from fewlabels.evaluate.features import extract_features
from fewlabels.evaluate.linear_probe import FeaturePreprocessing

SAMPLE = "fashion-mnist-sample"


@pytest.fixture(scope="module")
def sample():
    train, test, _ = train_and_test(SAMPLE, 28, 1, "skip")
    return train, test


@pytest.fixture
def recorded(monkeypatch):
    """Every call of train_classifier from the rounds: its arguments and what it trained."""
    calls = []
    real = network_rounds.train_classifier

    def record(*args, **kwargs):
        trained = real(*args, **kwargs)
        calls.append({"labeled": args[2], "kwargs": kwargs, "trained": trained})
        return trained

    monkeypatch.setattr(network_rounds, "train_classifier", record)
    return calls


def test_pool_probabilities_are_the_trained_networks_softmax(run_dir, sample, recorded):
    train, test = sample
    rounds = NetworkRounds.from_run(run_dir, NetworkTraining.choose("finetune", steps=6),
                                    train.images, test.images, num_classes=10)
    labeled = torch.arange(0, 600, 40)  # 15 images
    model = rounds(labeled, train.labels[labeled], 3)
    assert rounds.trained == [{"labels": 15, "steps": 6,
                               "seconds": rounds.trained[0]["seconds"]}]
    network = recorded[0]["trained"].network()
    mean, std = rounds.data.mean, rounds.data.std
    with torch.no_grad():
        direct_pool = network(normalize(to_float(train.images), mean, std)).softmax(dim=1)
        direct_test = network(normalize(to_float(test.images), mean, std)).softmax(dim=1)
    assert model.features.shape == (6000, network.backbone.feature_dim)
    assert torch.allclose(model.classifier.probabilities(model.features), direct_pool,
                          atol=1e-5)
    assert torch.allclose(model.test_probabilities, direct_test, atol=1e-5)
    assert model.classifier.num_classes == 10 and model.classifier.temperature == 1.0
    # eval mode: a batch's statistics do not matter, the features are the same in any batches
    small_batches = extract_features(network.backbone, train.images[:100], mean, std,
                                     batch_size=7)
    assert torch.allclose(small_batches, model.features[:100], atol=1e-5)
    assert torch.allclose(model.prepared, FeaturePreprocessing.fit(model.features)(
        model.features))
    # BALD's samples of the head: without dropout, every sample is the head itself
    weights = model.classifier.dropout_weights(3, 0.0, torch.Generator().manual_seed(0))
    sampled = model.classifier.sampled_probabilities(model.features[:50], weights)
    assert torch.allclose(sampled, direct_pool[:50].expand(3, -1, -1), atol=1e-5)


def test_the_semi_stream_is_what_the_steps_see_once():
    assert NetworkTraining.choose("finetune").unlabeled_size(6000) is None
    assert NetworkTraining.choose("semi", steps=3).unlabeled_size(6000) == 3 * 7 * 64
    assert NetworkTraining.choose("semi", steps=3, option_texts=["unlabeled-ratio=2"]
                                  ).unlabeled_size(6000) == 3 * 2 * 64
    assert NetworkTraining.choose("semi", steps=300).unlabeled_size(6000) == 6000
    assert NetworkTraining.choose("semi", unlabeled=500).unlabeled_size(6000) == 500


def test_network_classifier_head_arithmetic():
    head = torch.nn.Linear(4, 3)
    classifier = NetworkClassifier.from_head(head, temperature=2.0)
    features = torch.randn(5, 4)
    expected = (head(features) / 2.0).softmax(dim=1)
    assert torch.allclose(classifier.probabilities(features), expected.detach(), atol=1e-6)
    weights = classifier.dropout_weights(4, 0.5, torch.Generator().manual_seed(1))
    dropped = (weights == 0).all(dim=1)  # whole input columns are dropped
    assert dropped.any() and torch.allclose(weights[~dropped.unsqueeze(1).expand_as(weights)],
                                            2 * classifier.weight.expand(4, -1, -1)[
                                                ~dropped.unsqueeze(1).expand_as(weights)])


@pytest.mark.parametrize("kind", ["finetune", "semi"])
def test_each_round_trains_on_the_revealed_labels_only(run_dir, sample, recorded,
                                                       monkeypatch, kind):
    train, test = sample
    oracles = []

    class WatchedLabels(simulate_module.HiddenLabels):
        def __init__(self, labels):
            super().__init__(labels)
            oracles.append(self)

    monkeypatch.setattr(simulate_module, "HiddenLabels", WatchedLabels)
    training = (NetworkTraining.choose("finetune", steps=3) if kind == "finetune" else
                NetworkTraining.choose("semi", steps=1, unlabeled=448))
    rounds = NetworkRounds.from_run(run_dir, training, train.images, test.images,
                                    num_classes=10)
    real_call = NetworkRounds.__call__

    def checked_call(self, labeled, revealed, seed):
        # at every training, what was revealed is exactly what the classifier gets
        assert torch.equal(oracles[-1].revealed.nonzero().flatten(), labeled.sort().values)
        return real_call(self, labeled, revealed, seed)

    monkeypatch.setattr(NetworkRounds, "__call__", checked_call)
    source = run_features(str(run_dir), SAMPLE, None)
    pool_features, test_features = source(train, "train"), source(test, "test")
    curve = simulate_curve(pool_features, train.labels, test_features, test.labels,
                           num_classes=10, strategy="margin", budgets=[8, 12, 16], seed=2,
                           fit_round=rounds)
    assert [call["labeled"].labels.tolist() for call in recorded] == [
        train.labels[curve.queried[:count]].tolist() for count in (8, 12, 16)]
    for call, count in zip(recorded, (8, 12, 16), strict=True):
        positions = torch.tensor(curve.queried[:count])
        assert torch.equal(call["labeled"].images, train.images[positions])
        assert call["kwargs"].get("hidden_labels") is None  # not even logged
        unlabeled = call["kwargs"]["unlabeled"]
        if kind == "finetune":
            assert unlabeled is None
        else:  # pool images only (a seeded choice of 448), never a label
            assert unlabeled.shape == (448, 1, 28, 28)
            generator = torch.Generator().manual_seed(2)
            assert torch.equal(unlabeled, train.images[torch.randperm(6000,
                                                                      generator=generator)[:448]])
            assert call["trained"].method.name == "fixmatch"
    assert [r.labels for r in curve.rounds] == [8, 12, 16]
    assert all(r.temperature == 1.0 for r in curve.rounds)


def test_simulate_with_a_finetuned_classifier_records_how_it_trained(run_dir, sample, tmp_path,
                                                                      capsys):
    train, test = sample
    out = tmp_path / "active"
    assert main(["active", "simulate", "--init", str(run_dir), "--data", SAMPLE,
                 "--start", "10", "--batch", "5", "--rounds", "1", "--seeds", "1",
                 "--strategy", "typiclust-then-margin", "--classifier", "finetune",
                 "--classifier-steps", "5", "--classifier-option", "head-init=probe",
                 "--out", str(out)]) == 0
    results = json.loads((out / "active.json").read_text())
    classifier = results["settings"]["classifier"]
    assert classifier["kind"] == "finetune" and classifier["method"] == "supervised"
    assert classifier["init"] == str(run_dir) and classifier["steps_per_round"] == 5
    assert classifier["options"]["head_init"] == "probe"
    assert "temperature 1" in classifier["calibration"]
    assert classifier["trained"]["rounds"] == 4 and classifier["trained"]["steps"] == [5, 5]
    # the recorded first round is this network's test accuracy, trained again here
    curve = next(c for c in results["curves"] if c["strategy"] == "typiclust-then-margin")
    rounds = NetworkRounds.from_run(run_dir, NetworkTraining.choose(
        "finetune", steps=5, option_texts=["head-init=probe"]), train.images, test.images,
        num_classes=10)
    first = torch.tensor(curve["queried"][:10])
    model = rounds(first, train.labels[first], 0)
    accuracy = (model.test_probabilities.argmax(1) == test.labels).float().mean().item()
    assert curve["rounds"][0]["accuracy"] == pytest.approx(accuracy, abs=1e-6)
    assert curve["rounds"][0]["temperature"] == 1.0


@pytest.mark.parametrize("extra, message", [
    (["--classifier", "finetune", "--strategy", "margin,vote-entropy"],
     "--strategy vote-entropy needs a committee of probes"),
    (["--classifier-steps", "10"], "--classifier-steps train a network"),
    (["--classifier", "finetune", "--classifier-method", "fixmatch"],
     "--classifier-method is for --classifier semi"),
    (["--classifier", "semi", "--classifier-method", "supervised"],
     "--classifier-method supervised is not a semi-supervised method"),
    (["--classifier", "semi", "--classifier-option", "threshold=high"],
     "--classifier-option 'threshold=high'"),
])
def test_what_a_network_classifier_cannot_do_is_refused_in_one_line(
        run_dir, tmp_path, capsys, monkeypatch, extra, message):
    import fewlabels.active.pool as pool_module

    def refuse(*args, **kwargs):
        raise AssertionError("features extracted before the options were checked")

    monkeypatch.setattr(pool_module.FeatureSource, "__call__", refuse)
    assert main(["active", "simulate", "--init", str(run_dir), "--data", SAMPLE,
                 "--out", str(tmp_path / "out"), *extra]) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and "\n" not in error and "Traceback" not in error, error
    assert not (tmp_path / "out").exists()
