"""The fine-tuning protocol of `fewlabels evaluate` and the programmatic classifier run under
it (`fewlabels.semi.training.train_classifier`): the reported accuracy is the returned
network's on the test part, fine-tuning starts from the run's backbone, every budget gets a
finetune row in the JSON and the table, and the length and moving-average rules."""

from __future__ import annotations

import json

import pytest
import torch

from fewlabels.cli import main
from fewlabels.data.labeled import train_and_test
from fewlabels.data.splits import make_split
from fewlabels.errors import UserError
from fewlabels.evaluate import finetune as finetune_module
from fewlabels.evaluate.finetune import check_backbone_state, finetune_steps
from fewlabels.runs import load_pretrained
from fewlabels.semi.classifier_run import backbone_state, predict_probabilities
from fewlabels.semi.supervised import Supervised
from fewlabels.semi.training import epochs_for_steps, moving_average_decay, train_classifier


def test_the_finetune_row_is_the_returned_networks_test_accuracy(run_dir, tmp_path,
                                                                 monkeypatch, capsys):
    returned = []
    original = finetune_module.finetune

    def recording(*args, **kwargs):
        model = original(*args, **kwargs)
        returned.append((kwargs["seed"], len(args[3]), model))
        return model

    monkeypatch.setattr(finetune_module, "finetune", recording)
    path = tmp_path / "e.json"
    assert main(["evaluate", "--checkpoint", str(run_dir), "--data", "fashion-mnist-sample",
                 "--protocol", "knn,finetune", "--labels-per-class", "1,2", "--seeds", "2",
                 "--baselines", "supervised", "--finetune-steps", "3",
                 "--json", str(path)]) == 0
    out = capsys.readouterr().out
    results = json.loads(path.read_text())
    cells = {(c["representation"], c["protocol"], c["labels_per_class"]): c
             for c in results["cells"]}
    # one finetune row per budget, beside knn, before the baseline; labels counted
    rows = list(dict.fromkeys((c["representation"], c["protocol"]) for c in results["cells"]))
    assert rows == [("simclr", "knn"), ("simclr", "finetune"),
                    ("supervised from scratch", "supervised")]
    for budget in (1, 2):
        cell = cells["simclr", "finetune", budget]
        assert cell["seeds"] == [0, 1] and cell["labels_used"] == 10 * budget
        assert results["settings"]["labels_used"][f"{budget}/class"]["finetune"] == {
            "per_class": budget, "total": 10 * budget}
        assert all(d["from"] == "pretrained backbone" for d in cell["details"])
        assert [d["steps"] for d in cell["details"]] == [3, 3]  # 10-20 images, 1 step a pass
    assert results["settings"]["protocols"] == ["knn", "finetune"]
    table = [line for line in out.splitlines() if line.startswith("simclr")]
    assert any(line.split()[:2] == ["simclr", "finetune"] for line in table)
    assert "finetune: backbone + new linear classifier" in out

    # the reported value is the accuracy of the returned network's own predictions
    train, test, _ = train_and_test("fashion-mnist-sample", 28, 1, "error")
    mean, std = returned[0][2].mean.tolist(), returned[0][2].std.tolist()
    assert [(seed, size) for seed, size, _ in returned] == [(0, 10), (1, 10), (0, 20), (1, 20)]
    for seed, size, model in returned:
        probabilities = predict_probabilities(model.network, test.images, mean, std)
        direct = (probabilities.argmax(1) == test.labels).float().mean().item()
        cell = cells["simclr", "finetune", size // 10]
        assert cell["values"][cell["seeds"].index(seed)] == pytest.approx(direct, abs=1e-7)
        # the split it trained on is the budget's, as make_split draws it
        assert len(make_split(train.labels, size // 10, seed).labeled) == size


def test_finetuning_starts_from_the_runs_backbone_weights(run_dir, monkeypatch):
    pretrained = load_pretrained(run_dir)
    state = backbone_state(pretrained.network)
    seen = {}
    original = Supervised.training_loss

    def recording(self, inputs, step):
        if step.step == 0:
            seen["backbone"] = {k: v.clone() for k, v in self.backbone.state_dict().items()}
            seen["average"] = {k: v.clone() for k, v in
                               self.average.backbone.state_dict().items()}
        return original(self, inputs, step)

    monkeypatch.setattr(Supervised, "training_loss", recording)
    train, _, _ = train_and_test("fashion-mnist-sample", 28, 1, "error")
    labeled = train.subset(make_split(train.labels, 2, 0).labeled)
    info = pretrained.data.__class__(**{**pretrained.data.__dict__, "num_classes": 10})
    trained = train_classifier(pretrained.checkpoint["run"]["backbone"], info, labeled,
                               init=state, steps=2, seed=0, options={"ema_decay": 0.0})
    for name, value in state.items():
        assert torch.equal(seen["backbone"][name], value), name
        assert torch.equal(seen["average"][name], value), name
    after = trained.method.backbone.state_dict()
    assert any(not torch.equal(after[name], value) for name, value in state.items()
               if value.is_floating_point())
    assert trained.steps == 2 and trained.settings()["method"] == "supervised"


def test_a_network_that_is_not_a_plain_backbone_is_refused_in_one_line(run_dir):
    pretrained = load_pretrained(run_dir)
    state = backbone_state(pretrained.network)
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(UserError, match="not a plain backbone"):
        check_backbone_state(state, pretrained.checkpoint["run"]["backbone"], pretrained.data)


def test_length_and_moving_average_rules():
    assert finetune_steps(10) == 200 and finetune_steps(100) == 200  # clamped from below
    assert finetune_steps(1000) == 30 * 16 and finetune_steps(60_000) == 2000
    # whole epochs: ceil(labeled / batch) steps each without an unlabeled stream
    assert epochs_for_steps(200, 10, 64) == (200, 200)
    assert epochs_for_steps(2000, 60_000, 64) == (2, 2 * 938)
    assert epochs_for_steps(1, 1000, 64) == (1, 16)
    assert epochs_for_steps(100, 10, 8, unlabeled_ratio=2, num_unlabeled=100) == (17, 102)
    with pytest.raises(UserError, match="do not fill one batch"):
        epochs_for_steps(10, 10, 8, unlabeled_ratio=7, num_unlabeled=50)
    # the average's time constant 1/(1-decay) is a tenth of the run, at most FixMatch's 1000
    assert moving_average_decay(200) == pytest.approx(0.95)
    assert moving_average_decay(2000) == pytest.approx(0.995)
    assert moving_average_decay(10**6) == 0.999
    assert moving_average_decay(5) == 0.0
