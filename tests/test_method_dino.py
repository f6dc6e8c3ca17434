"""DINO through the engine: the teacher sees the global views only and runs in train mode,
follows the EMA formula with the scheduled momentum, the centre follows its formula, the last
layer is frozen for the first epoch, two processes equal one, a resumed run equals an
uninterrupted one, and every backbone family trains."""

import pytest
import torch

from engine_harness import compare_one_and_two_processes
from fewlabels.cli import main
from fewlabels.engine.checkpoint import load_checkpoint
from fewlabels.methods import Batch, StepInfo
from fewlabels.runs import build_method

TINY_HEAD = ["--out-dim", "32", "--hidden-dim", "16", "--bottleneck-dim", "8",
             "--local-views", "2"]
DATA = ["--data", "fashion-mnist-sample", "--max-images", "48", "--batch-size", "16",
        "--no-progress", *TINY_HEAD]
CONVNET = ["--width", "4", "--depth", "2", "--feature-dim", "8"]


def pretrain(out, *extra, backbone=CONVNET):
    return main(["pretrain", "--method", "dino", "--out", str(out), *DATA, *backbone, *extra])


def _step(method, images, step=0, values=None):
    generator = torch.Generator().manual_seed(step)
    inputs = method.make_views(Batch(unlabeled=images), generator)
    info = StepInfo(step, 0, 0.0, generator, 3, values or {"teacher_temperature": 0.04,
                                                          "teacher_momentum": 0.9})
    return inputs, info


def test_teacher_sees_global_views_in_train_mode_and_the_centre_follows_its_formula(tmp_path):
    assert pretrain(tmp_path / "run", "--epochs", "1") == 0
    spec = load_checkpoint(tmp_path / "run")["run"]
    method = build_method(spec).train()
    seen = []
    method.teacher_backbone.register_forward_hook(
        lambda module, args, out: seen.append((tuple(args[0].shape), module.training)))
    images = torch.randint(0, 256, (6, 1, 28, 28), dtype=torch.uint8)
    inputs, info = _step(method, images)
    global_views, local_views = inputs
    assert global_views.shape == (12, 1, 20, 20) and local_views.shape == (12, 1, 12, 12)
    with torch.no_grad():
        teacher_logits = method.teacher_head(method.teacher_backbone(global_views))
    seen.clear()
    center = torch.randn(32)
    method.center.copy_(center)
    method.training_loss(inputs, info)
    assert seen == [((12, 1, 20, 20), True)]  # the two global views, in train mode
    # c <- 0.9 c + 0.1 mean(teacher logits); the teacher's BN saw the same batch twice, in
    # train mode both times, so its logits match the ones computed above
    expected = 0.9 * center + 0.1 * teacher_logits.mean(dim=0)
    torch.testing.assert_close(method.center, expected, atol=1e-5, rtol=1e-4)


def test_ema_update_and_the_momentum_schedule(tmp_path):
    assert pretrain(tmp_path / "run", "--epochs", "1") == 0
    method = build_method(load_checkpoint(tmp_path / "run")["run"])
    schedules = method.schedules()
    momentum = schedules["teacher_momentum"]
    assert momentum.value(0, 0.0, 0, 0.0) == 0.99 and momentum.value(9, 1.0, 0, 0.0) == 1.0
    with torch.no_grad():
        for parameter in method.backbone.parameters():
            parameter.add_(1.0)
    before = [p.clone() for p in method.teacher_backbone.parameters()]
    students = [p.clone() for p in method.backbone.parameters()]
    buffers = [b.clone() for b in method.teacher_backbone.buffers()]
    method.after_optimizer_step(StepInfo(0, 0, 0.0, torch.Generator(), 3,
                                         {"teacher_momentum": 0.75}))
    for teacher, old, student in zip(method.teacher_backbone.parameters(), before, students,
                                     strict=True):
        torch.testing.assert_close(teacher, 0.75 * old + 0.25 * student)
    for teacher, old in zip(method.teacher_backbone.buffers(), buffers, strict=True):
        assert torch.equal(teacher, old)  # its own statistics: the EMA touches parameters


def test_the_last_layer_is_frozen_during_the_first_epoch_only(tmp_path):
    out = tmp_path / "run"
    assert pretrain(out, "--epochs", "2", "--stop-after-steps", "3") == 130  # 3 steps an epoch
    after_one = load_checkpoint(out)["model"]
    torch.manual_seed(0)
    fresh = build_method(load_checkpoint(out)["run"]).state_dict()
    name = "head.last_layer.prototypes.weight"
    assert torch.equal(after_one[name], fresh[name])  # frozen for the first epoch
    assert not torch.equal(after_one["head.mlp.0.weight"], fresh["head.mlp.0.weight"])
    assert main(["pretrain", "--out", str(out), "--resume", "--no-progress"]) == 0
    assert not torch.equal(load_checkpoint(out)["model"][name], fresh[name])


def test_resume_gives_the_same_teacher_centre_and_weights(tmp_path):
    assert pretrain(tmp_path / "whole", "--epochs", "2") == 0
    assert pretrain(tmp_path / "split", "--epochs", "2", "--stop-after-steps", "4") == 130
    assert main(["pretrain", "--out", str(tmp_path / "split"), "--resume",
                 "--no-progress"]) == 0
    whole = load_checkpoint(tmp_path / "whole")["model"]
    resumed = load_checkpoint(tmp_path / "split")["model"]
    assert whole.keys() == resumed.keys() and "center" in whole
    for name, value in whole.items():
        assert torch.equal(value, resumed[name]), name


@pytest.mark.parametrize("backbone", [
    ["--backbone", "resnet", "--width", "4", "--depth", "1"],
    ["--backbone", "vit", "--width", "16", "--depth", "1", "--heads", "2", "--optimizer",
     "adamw", "--lr", "0.0005", "--weight-decay", "0.04", "--final-weight-decay", "0.4",
     "--gradient-clip", "3"],
])
def test_other_backbones_train(tmp_path, backbone):
    assert pretrain(tmp_path / "run", "--epochs", "1", backbone=backbone) == 0
    checkpoint = load_checkpoint(tmp_path / "run")
    assert checkpoint["finished"] and checkpoint["run"]["representation"] == "teacher"


def test_help_shows_dino_options_only(capsys):
    with pytest.raises(SystemExit):
        main(["pretrain", "--method", "dino", "--out", "x", "--help"])
    text = capsys.readouterr().out
    assert "--teacher-momentum" in text and "--global-crop-scale FLOAT,FLOAT" in text
    assert "--centering true|false" in text and "--projection-dim" not in text


@pytest.mark.slow
def test_two_processes_equal_one(tmp_path):
    compare_one_and_two_processes(
        tmp_path, "dino", {"out_dim": 32, "hidden_dim": 16, "bottleneck_dim": 8,
                           "local_views": 2},
        {"name": "convnet", "width": 4, "depth": 2, "feature_dim": 8}, steps=3, batch_size=16)


def test_the_head_normalises_its_bottleneck_and_optionally_its_last_layer():
    from fewlabels.models.heads import DINOHead

    torch.manual_seed(0)
    x = torch.randn(5, 6)
    for normalized in (True, False):
        head = DINOHead(6, 7, hidden_dim=8, bottleneck_dim=4, normalize_last_layer=normalized)
        with torch.no_grad():
            head.last_layer.prototypes.weight.mul_(3.0)  # rows of norm 3
            bottleneck = torch.nn.functional.normalize(head.mlp(x), dim=1)
            weight = head.last_layer.prototypes.weight
            expected = bottleneck @ (weight / 3 if normalized else weight).T
        torch.testing.assert_close(head(x), expected)


def test_the_collapse_signal_sees_both_collapses_of_the_teacher():
    """Uniform teacher distributions (logits equal up to a per-image constant) and one
    dominant dimension both give a spread near 0; distinct sharp distributions near 1."""
    from fewlabels.methods.base import DataInfo
    from fewlabels.methods.dino import DINO, DINOConfig
    from fewlabels.models.backbones import build_backbone

    backbone = build_backbone("convnet", in_channels=1, image_size=28, width=4, depth=2)
    data = DataInfo(1, 28, (0.5,), (0.25,), 0, 16)
    method = DINO(backbone, DINOConfig(out_dim=32, hidden_dim=16, bottleneck_dim=8), data)
    torch.manual_seed(0)
    base = torch.randn(32)
    cases = {
        "uniform": base * 1e-3 + torch.randn(16, 1),  # flat logits up to a per-image constant
        "one dimension": torch.eye(32)[torch.zeros(16, dtype=torch.long)] * 5,
        "healthy": torch.eye(32)[torch.arange(16)] * 5,
    }
    spreads = {}
    for name, logits in cases.items():
        if "teacher_head" in method._modules:  # noqa: SLF001
            del method.teacher_head
        method.teacher_head = lambda features, logits=logits: logits  # noqa: E731
        method.center.zero_()
        inputs, info = _step(method, torch.randint(0, 256, (8, 1, 28, 28), dtype=torch.uint8))
        spreads[name] = float(method.training_loss(inputs, info)["embedding_spread"])
    assert spreads["uniform"] < 0.05 and spreads["one dimension"] < 0.05
    assert spreads["healthy"] > 0.5
