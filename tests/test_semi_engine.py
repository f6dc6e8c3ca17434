"""The classifier path: the labeled and unlabeled streams, the moving average of the weights,
and `fewlabels semi` / `fewlabels finetune` end to end (split stored and trained on, resume,
starting from a pretrained backbone, one-line errors)."""

import json

import pytest
import torch

from fewlabels.cli import main
from fewlabels.data import load_dataset
from fewlabels.engine.checkpoint import load_checkpoint
from fewlabels.engine.sampling import CyclingSampler
from fewlabels.engine.streams import BatchStreams, LabeledStream
from fewlabels.methods.base import DataInfo, StepInfo
from fewlabels.models import build_backbone
from fewlabels.runs import build_method
from fewlabels.semi import SEMI_METHODS
from fewlabels.semi.classifier_run import pseudo_label_warning
from fewlabels.semi.supervised import Supervised

SMALL = ["--data", "fashion-mnist-sample", "--width", "4", "--depth", "2", "--no-progress",
         "--batch-size", "16"]


def test_cycling_sampler_fills_batches_larger_than_the_set_and_visits_each_item_once_a_cycle():
    sampler = CyclingSampler(num_items=5, global_batch_size=8, seed=3)
    chain = torch.cat([sampler.indices(step) for step in range(5)])  # 40 positions: 8 cycles
    for cycle in chain.reshape(8, 5):
        assert sorted(cycle.tolist()) == [0, 1, 2, 3, 4]
    assert torch.equal(sampler.indices(3), CyclingSampler(5, 8, seed=3).indices(3))  # stateless
    halves = [sampler.indices(2, rank, 2) for rank in range(2)]
    assert torch.equal(torch.cat(halves), sampler.indices(2))


def test_the_unlabeled_stream_visits_every_image_once_an_epoch_on_imbalanced_data():
    images = torch.zeros(96, 1, 4, 4, dtype=torch.uint8)
    hidden = torch.cat([torch.zeros(90), torch.ones(6)]).long()  # 15:1 imbalance
    labeled = LabeledStream(images[:3], torch.tensor([0, 1, 0]), unlabeled_ratio=3,
                            hidden_labels=hidden)
    streams = BatchStreams(images, labeled, batch_size=8, seed=0, device=torch.device("cpu"))
    assert streams.steps_per_epoch == 4  # 96 images / (3 x 8)
    for epoch in range(2):
        seen = torch.cat([streams.batch(epoch * 4 + step, 0, 1)[0].indices for step in range(4)])
        assert sorted(seen.tolist()) == list(range(96))
    batch, count = streams.batch(0, 0, 1)
    assert count == 32 and len(batch.labeled) == 8 and len(batch.unlabeled) == 24
    assert torch.equal(batch.hidden_labels, hidden[batch.indices])
    assert torch.equal(batch.labels, labeled.labels[batch.labeled_indices])


def test_without_an_unlabeled_stream_an_epoch_is_one_pass_over_the_labels():
    images = torch.zeros(10, 1, 4, 4, dtype=torch.uint8)
    labeled = LabeledStream(images[:5], torch.arange(5) % 2)
    streams = BatchStreams(images, labeled, batch_size=2, seed=0, device=torch.device("cpu"))
    assert streams.steps_per_epoch == 3
    batch, count = streams.batch(0, 0, 1)
    assert batch.unlabeled is None and count == 2


def _supervised(ema_decay: float = 0.9) -> Supervised:
    data = DataInfo(1, 28, (0.5,), (0.25,), num_classes=3, num_images=10)
    config = SEMI_METHODS.get("supervised").Config(ema_decay=ema_decay)
    backbone = build_backbone("convnet", in_channels=1, image_size=28, width=4, depth=2)
    return Supervised(backbone, config, data)


def test_the_moving_average_follows_its_formula_and_copies_batch_norm_statistics():
    torch.manual_seed(0)
    method = _supervised(ema_decay=0.9)
    before = {k: v.clone() for k, v in method.average.state_dict().items()}
    with torch.no_grad():
        for parameter in method.backbone.parameters():
            parameter.add_(1.0)
        method.classifier.weight.mul_(3.0)
        for module in method.backbone.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.fill_(0.7)
    assert method.average_decay(0) == pytest.approx(0.1)  # the warm-up: (1 + 0) / (10 + 0)
    assert method.average_decay(10) == pytest.approx(11 / 20)
    method.after_optimizer_step(StepInfo(1000, 0, 0.0, torch.Generator()))  # warmed up: 0.9
    after = method.average.state_dict()
    trained = {**{f"backbone.{k}": v for k, v in method.backbone.state_dict().items()},
               **{f"classifier.{k}": v for k, v in method.classifier.state_dict().items()}}
    for name, value in after.items():
        if name.endswith(("running_mean", "running_var", "num_batches_tracked")):
            assert torch.equal(value, trained[name]), name  # copied, not averaged
        else:
            assert torch.allclose(value, 0.9 * before[name] + 0.1 * trained[name]), name
    assert method.classifier_network() is method.average
    assert _supervised(ema_decay=0.0).classifier_network().classifier is not None


def test_semi_stores_the_split_it_trains_on(tmp_path, monkeypatch):
    seen: list[torch.Tensor] = []
    original = Supervised.make_views

    def recording(self, batch, generator):
        seen.append(batch.labeled.clone())
        return original(self, batch, generator)

    monkeypatch.setattr(Supervised, "make_views", recording)
    out = tmp_path / "run"
    assert main(["semi", "--method", "supervised", "--labels-per-class", "2", "--out", str(out),
                 "--epochs", "3", *SMALL]) == 0
    spec = json.loads((out / "run.json").read_text())["run"]
    indices = torch.tensor(spec["split"]["labeled_indices"])
    train = load_dataset("fashion-mnist-sample").train
    assert len(indices) == 20 and torch.bincount(train.labels[indices]).tolist() == [2] * 10
    stored = {bytes(image.flatten().tolist()) for image in train.images[indices]}
    used = {bytes(image.flatten().tolist()) for batch in seen for image in batch}
    assert used == stored  # 3 epochs of 2 batches of 16 cover all 20 labeled images
    result = json.loads((out / "result.json").read_text())
    assert result["labeled"] == 20 and 0.0 <= result["test_accuracy"] <= 1.0
    assert result["test_images"] == len(load_dataset("fashion-mnist-sample").test)
    assert load_checkpoint(out)["run"]["kind"] == "classifier"


def test_a_classifier_run_resumes_to_the_weights_of_an_uninterrupted_one(tmp_path):
    common = ["semi", "--method", "supervised", "--labels-per-class", "3", "--epochs", "3",
              *SMALL]
    assert main([*common, "--out", str(tmp_path / "whole")]) == 0
    assert main([*common, "--out", str(tmp_path / "split"), "--stop-after-steps", "4"]) == 130
    assert main(["semi", "--out", str(tmp_path / "split"), "--resume", "--no-progress"]) == 0
    whole, resumed = load_checkpoint(tmp_path / "whole"), load_checkpoint(tmp_path / "split")
    assert whole["step"] == resumed["step"] == 6
    for name, value in whole["model"].items():
        assert torch.equal(value, resumed["model"][name]), name


def test_finetune_starts_from_the_pretrained_backbone(tmp_path):
    pretrained = tmp_path / "pretrained"
    assert main(["pretrain", "--out", str(pretrained), "--max-images", "64", "--epochs", "1",
                 "--projection-hidden-dim", "8", "--projection-dim", "4", *SMALL]) == 0
    out = tmp_path / "finetuned"
    assert main(["finetune", "--init", str(pretrained), "--labels-per-class", "1", "--out",
                 str(out), "--epochs", "1", "--lr", "1e-9", "--no-progress",
                 "--batch-size", "10"]) == 0
    start = load_checkpoint(pretrained)["model"]
    tuned = load_checkpoint(out)
    assert tuned["run"]["init"] == str(pretrained)
    assert tuned["run"]["backbone"] == load_checkpoint(pretrained)["run"]["backbone"]
    for name, value in tuned["model"].items():
        if name.startswith("backbone.") and value.is_floating_point() and "running" not in name:
            assert torch.allclose(value, start[name], atol=1e-6), name  # lr ~ 0: unchanged
    method = build_method(tuned["run"])
    assert method.data.mean == tuple(load_checkpoint(pretrained)["run"]["data"]["info"]["mean"])
    assert main(["semi", "--out", str(pretrained), "--resume", "--no-progress"]) == 2


@pytest.mark.parametrize("arguments, message", [
    (["--labels-per-class", "0"], "not a number of labels per class"),
    (["--labels-per-class", "5000"], "too few for 5000 labels"),
    (["--labels-per-class", "2", "--method", "nonesuch"], "unknown classifier method"),
    (["--labels-per-class", "2", "--method", "dann"], "run it with fewlabels adapt"),
])
def test_bad_classifier_runs_get_one_line_errors(tmp_path, capsys, arguments, message):
    assert main(["semi", "--out", str(tmp_path / "run"), *SMALL, *arguments]) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and "\n" not in error and "Traceback" not in error


def test_a_pseudo_label_rate_stuck_at_zero_is_reported(tmp_path):
    lines = [{"step": s, "pseudo_label_rate": 0.5 if s < 3 else 0.0} for s in range(6)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(map(json.dumps, lines)) + "\n")
    assert "lower --threshold" in pseudo_label_warning(tmp_path)
    lines[-1]["pseudo_label_rate"] = 0.01
    (tmp_path / "metrics.jsonl").write_text("\n".join(map(json.dumps, lines)) + "\n")
    assert pseudo_label_warning(tmp_path) is None


def test_max_unlabeled_keeps_the_labeled_images_and_a_seeded_choice_of_the_rest():
    from fewlabels.data.imageset import ImageSet
    from fewlabels.semi.classifier_run import split_spec, streams

    images = torch.arange(40, dtype=torch.uint8).reshape(40, 1, 1, 1).expand(40, 1, 2, 2)
    train = ImageSet(images.contiguous(), torch.arange(40) % 4, [str(i) for i in range(4)])
    split = split_spec(train.labels, 1, seed=5)
    pool, labeled = streams(train, split, unlabeled_ratio=2, max_unlabeled=10)
    values = set(pool[:, 0, 0, 0].tolist())
    assert len(pool) == 10 and set(split["labeled_indices"]) <= values
    assert torch.equal(labeled.hidden_labels, train.labels[pool[:, 0, 0, 0].long()])
    again, _ = streams(train, split, unlabeled_ratio=2, max_unlabeled=10)
    assert torch.equal(pool, again)


def test_a_slow_or_frozen_backbone_and_a_probe_initialised_head():
    from fewlabels.engine.optim import parameter_groups

    torch.manual_seed(0)
    method = _supervised()
    method.config.backbone_lr_scale = 0.1
    groups = parameter_groups(method, 5e-4, method.parameter_options)
    backbone = {id(p) for p in method.backbone.parameters()}
    for group in groups:
        in_backbone = {id(p) in backbone for p in group["params"]}
        assert len(in_backbone) == 1  # a group is all backbone or all classifier
        assert group["lr_scale"] == (0.1 if in_backbone.pop() else 1.0)
    method.config.backbone_lr_scale = 0.0
    method.train()
    assert not method.backbone.training and method.classifier.training
    images = torch.randint(0, 256, (12, 1, 28, 28), dtype=torch.uint8)
    labels = torch.arange(12) % 3
    assert method.fit_head_(images, labels) == 1.0  # 12 points in 256 dimensions: separable
    assert torch.equal(method.average.classifier.weight, method.classifier.weight)
    logits = method.classifier(method.backbone.eval()(method.normalized(images)))
    assert torch.equal(logits.argmax(1), labels)


def test_a_run_starts_from_the_given_backbone_and_fits_its_head_only_when_asked():
    torch.manual_seed(0)
    source, method = _supervised(), _supervised()
    state = {k: v.clone() for k, v in source.backbone.state_dict().items()}
    images = torch.randint(0, 256, (12, 1, 28, 28), dtype=torch.uint8)
    labels = torch.arange(12) % 3
    head = method.classifier.weight.clone()
    assert method.start_(state, images, labels) is None  # head_init "random": untouched
    assert torch.equal(method.classifier.weight, head)
    for name, value in method.backbone.state_dict().items():
        assert torch.equal(value, state[name]), name
    method.config.head_init = "probe"
    assert method.start_(None, images, labels) == 1.0
    assert not torch.equal(method.classifier.weight, head)


@pytest.mark.parametrize("method", ["fixmatch", "co-training"])
def test_a_frozen_backbone_gets_no_gradient_and_keeps_every_weight_and_statistic(method):
    from fewlabels.data.imageset import ImageSet
    from fewlabels.semi.training import train_classifier

    data = DataInfo(1, 28, (0.5,), (0.25,), num_classes=3, num_images=64)
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (64, 1, 28, 28), dtype=torch.uint8, generator=generator)
    labeled = ImageSet(images[:6], torch.arange(6) % 3)
    backbone = build_backbone("convnet", in_channels=1, image_size=28, width=4, depth=2)
    options = {"backbone_lr_scale": 0.0, "unlabeled_ratio": 2, "ema_decay": 0.0}
    if method == "co-training":
        options["rounds"] = 1
    start = {k: v.clone() for k, v in backbone.state_dict().items()}
    recipe = SEMI_METHODS.get(method).recipe.replace(batch_size=8)
    trained = train_classifier(backbone, data, labeled, unlabeled=images, method=method,
                               options=options, recipe=recipe, steps=3, seed=0)
    networks = [trained.method.backbone]
    if method == "co-training":
        networks.append(trained.method.second_backbone)
    for network in networks:
        assert not any(p.requires_grad for p in network.parameters())
        assert all(p.grad is None for p in network.parameters())
    for name, value in trained.method.backbone.state_dict().items():
        assert torch.equal(value, start[name]), name  # running statistics included
    assert trained.method.classifier.weight.requires_grad  # the classifier still trains
    assert trained.steps >= 3
