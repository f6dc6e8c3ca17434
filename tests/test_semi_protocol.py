"""The semi-supervised protocol of `fewlabels evaluate` (``--protocol semi``): its row is the
returned network's test accuracy, it counts only the split's labels, never reads the
unlabeled images' labels, starts from the run's backbone with a probe-fitted classifier, and
its pool is a seeded choice of train images."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from fewlabels.cli import main
from fewlabels.data.labeled import train_and_test
from fewlabels.data.splits import make_split
from fewlabels.errors import UserError
from fewlabels.evaluate import evaluate_label_efficiency
from fewlabels.evaluate.semi_protocol import parse_semi_options, semi_protocol, unlabeled_pool
from fewlabels.runs import load_pretrained
from fewlabels.semi.classifier_run import backbone_state
from fewlabels.semi.fixmatch import FixMatch
from fewlabels.semi.training import train_classifier


@pytest.fixture(scope="module")
def pretrained(run_dir):
    loaded = load_pretrained(run_dir)
    info = loaded.data.__class__(**{**loaded.data.__dict__, "num_classes": 10})
    return loaded, info


def test_the_semi_row_in_evaluate(run_dir, tmp_path, capsys):
    path = tmp_path / "e.json"
    assert main(["evaluate", "--checkpoint", str(run_dir), "--data", "fashion-mnist-sample",
                 "--protocol", "knn,semi", "--labels-per-class", "1", "--seeds", "1",
                 "--baselines", "none", "--semi-steps", "1", "--semi-unlabeled", "448",
                 "--semi-option", "unlabeled-ratio=6", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    results = json.loads(path.read_text())
    rows = list(dict.fromkeys((c["representation"], c["protocol"]) for c in results["cells"]))
    assert rows == [("simclr", "knn"), ("simclr", "semi")]
    cell = next(c for c in results["cells"] if c["protocol"] == "semi")
    assert cell["labels_used"] == 10  # the unlabeled images' labels are not counted
    detail = cell["details"][0]
    assert detail["method"] == "fixmatch" and detail["unlabeled"] == 448
    assert detail["steps"] == 1 and detail["head_init"] == "probe"
    assert detail["backbone_lr_scale"] == 0.1 and detail["unlabeled_ratio"] == 6
    assert results["settings"]["protocols"] == ["knn", "semi"]
    assert "semi: fixmatch from the pretrained backbone" in out


def test_an_unknown_semi_method_is_one_line(run_dir, capsys):
    assert main(["evaluate", "--checkpoint", str(run_dir), "--data", "fashion-mnist-sample",
                 "--protocol", "semi", "--semi-method", "nosuch", "--baselines", "none"]) == 2
    assert "unknown" in capsys.readouterr().err


def test_semi_options_are_parsed_with_the_methods_types():
    assert parse_semi_options("fixmatch", ["backbone-lr-scale=0", "--threshold=0.9",
                                           "distribution_alignment=true"]) == {
        "backbone_lr_scale": 0.0, "threshold": 0.9, "distribution_alignment": True}
    with pytest.raises(UserError, match="one of: .*threshold"):
        parse_semi_options("fixmatch", ["thresh=0.9"])
    with pytest.raises(UserError, match="not a number"):
        parse_semi_options("fixmatch", ["threshold=high"])
    with pytest.raises(UserError, match="NAME=VALUE"):
        parse_semi_options("fixmatch", ["threshold"])


def test_the_unlabeled_images_labels_never_change_the_result(pretrained):
    loaded, info = pretrained
    train, test, _ = train_and_test("fashion-mnist-sample", 28, 1, "error")
    test = test.subset(torch.arange(200))
    fit = semi_protocol(backbone_state(loaded.network), loaded.checkpoint["run"]["backbone"],
                        info, train, steps=2, unlabeled=448)

    def accuracy(labels: torch.Tensor) -> float:
        relabeled = dataclasses.replace(train, labels=labels)
        results = evaluate_label_efficiency({}, relabeled, test, protocols=(),
                                            labels_per_class=(1,), seeds=(0,),
                                            validation_per_class=0, semi=fit,
                                            finetune_name="run")
        return results.cell("run", "semi", 1).mean

    labeled = make_split(train.labels, 1, 0).labeled
    scrambled = train.labels[torch.randperm(len(train), generator=torch.Generator()
                                            .manual_seed(3))]
    scrambled[labeled] = train.labels[labeled]  # the split's own labels stay
    assert accuracy(scrambled) == accuracy(train.labels)


def test_the_pool_is_a_seeded_choice_of_train_images():
    train, _, _ = train_and_test("fashion-mnist-sample", 28, 1, "error")
    first, again, other = (unlabeled_pool(train, 100, seed) for seed in (0, 0, 1))
    assert first.shape == (100, *train.images.shape[1:]) and torch.equal(first, again)
    assert not torch.equal(first, other)
    assert unlabeled_pool(train, None, 0) is train.images
    assert unlabeled_pool(train, 10**6, 0) is train.images


def test_a_probe_initialised_head_starts_from_the_labeled_images_fit(pretrained,
                                                                      monkeypatch):
    loaded, info = pretrained
    train, _, _ = train_and_test("fashion-mnist-sample", 28, 1, "error")
    labeled = train.subset(torch.arange(10))
    seen = {}
    original = FixMatch.training_loss

    def recording(self, inputs, step):
        if step.step == 0:
            with torch.no_grad():
                self.backbone.eval()
                logits = self.classifier(self.backbone(self.normalized(labeled.images)))
                self.backbone.train()
            seen["accuracy"] = (logits.argmax(1) == labeled.labels).float().mean().item()
        return original(self, inputs, step)

    monkeypatch.setattr(FixMatch, "training_loss", recording)
    for head, expected in (("probe", 1.0), ("random", None)):
        train_classifier(loaded.checkpoint["run"]["backbone"], info, labeled,
                         method="fixmatch", unlabeled=train.images[:448], steps=1,
                         init=backbone_state(loaded.network), options={"head_init": head})
        if expected is not None:
            assert seen["accuracy"] == expected  # 10 images in 512 dimensions: separable
        else:
            assert seen["accuracy"] < 1.0


def test_a_state_that_is_not_a_backbone_is_refused(pretrained):
    loaded, info = pretrained
    train, _, _ = train_and_test("fashion-mnist-sample", 28, 1, "error")
    state = {**backbone_state(loaded.network), "extra.weight": torch.zeros(1)}
    with pytest.raises(UserError, match="not a plain backbone"):
        semi_protocol(state, loaded.checkpoint["run"]["backbone"], info, train)
