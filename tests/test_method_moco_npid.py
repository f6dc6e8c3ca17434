"""MoCo v2, MoCo v3 and NPID: the queue holds exactly the last keys and never this step's;
the key encoders follow the EMA formula and keep their own batch-norm statistics; split
(shuffled) batch norm normalises each group by its own statistics and is a plain batch norm
in eval mode and in its state dict; the memory bank follows its update formula at the
batch's indices only; two processes equal one; a resumed MoCo run equals an uninterrupted
one; the command line shows and parses MoCo's options."""

import copy
import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from engine_harness import compare_one_and_two_processes
from fewlabels.cli import main
from fewlabels.engine.checkpoint import load_checkpoint
from fewlabels.errors import UserError
from fewlabels.losses.contrastive import moco_queue_loss
from fewlabels.methods import Batch, DataInfo, StepInfo
from fewlabels.methods import moco as moco_module
from fewlabels.methods.moco import MoCo, MoCoConfig
from fewlabels.methods.mocov3 import MoCoV3, MoCoV3Config
from fewlabels.methods.npid import NPID, NPIDConfig
from fewlabels.models import build_backbone
from fewlabels.models.split_batch_norm import SplitBatchNorm, convert_to_split_batch_norm

DATA = DataInfo(channels=1, image_size=28, mean=(0.3,), std=(0.35,), num_images=40)
CONVNET = {"name": "convnet", "width": 4, "depth": 2, "feature_dim": 8}


def _images(count=40, seed=0):
    generator = torch.Generator().manual_seed(seed)
    small = torch.rand(count, 1, 7, 7, generator=generator)
    return (F.interpolate(small, size=28, mode="bilinear") * 255).to(torch.uint8)


def _convnet():
    return build_backbone("convnet", in_channels=1, image_size=28, width=4, depth=2,
                          feature_dim=8)


def _moco(**options):
    torch.manual_seed(0)
    config = MoCoConfig(**{"projection_dim": 8, "queue_size": 20, **options})
    return MoCo(_convnet(), config, DATA).train()


def _train(method, steps, first=0, batch=8, values=None):
    """``steps`` steps of SGD from step ``first`` through the method's hooks, as the engine
    calls them."""
    images = _images()
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.1)
    for step in range(first, first + steps):
        indices = torch.arange(step * batch, (step + 1) * batch) % len(images)
        generator = torch.Generator().manual_seed(step)
        with torch.no_grad():
            inputs = method.make_views(Batch(unlabeled=images[indices], indices=indices),
                                       generator)
        info = StepInfo(step, 0, 0.0, generator, 5,
                        {"key_momentum": 0.9} if values is None else values)
        method(inputs, info)["loss"].backward()
        optimizer.step()
        optimizer.zero_grad()
        method.after_optimizer_step(info)


# -- MoCo v2: the queue ------------------------------------------------------------------------


@pytest.mark.parametrize("symmetric", [False, True])
def test_the_queue_holds_the_last_keys_and_never_a_key_of_the_current_step(monkeypatch,
                                                                            symmetric):
    method = _moco(symmetric=symmetric, batch_norm_splits=2)
    keys, steps = [], []  # every key in the order the losses saw them; per step: its calls

    def recording_loss(query, key, queue, temperature):
        assert queue.data_ptr() == method.queue.queue.data_ptr()  # the live queue
        keys.append(F.normalize(key, dim=1).clone())
        steps[-1].append((keys[-1], queue.clone()))
        return moco_queue_loss(query, key, queue, temperature)

    monkeypatch.setattr(moco_module, "moco_queue_loss", recording_loss)
    original_enqueue = method.queue.enqueue_

    def enqueue(part):
        assert len(steps[-1]) == (2 if symmetric else 1)  # only after every loss term
        original_enqueue(part)

    monkeypatch.setattr(method.queue, "enqueue_", enqueue)
    for step in range(4):  # 4 x 8 (x 2) keys through a queue of 20: it wraps around
        steps.append([])
        _train(method, 1, first=step)
    for calls in steps:
        this_step = torch.cat([key for key, _ in calls])  # both views' keys when symmetric
        for _, queue in calls:
            # no key of this step's images is in the queue its loss reads: no image is its
            # own negative (an enqueued key would be a row at distance ~0)
            assert torch.cdist(this_step, queue).min() > 1e-3
    everything = torch.cat(keys)  # [32 or 64, 8] in enqueue order
    torch.testing.assert_close(method.queue.ordered(), everything[-20:])
    assert int(method.queue.pointer) == len(everything) % 20


# -- momentum encoders -------------------------------------------------------------------------


def _mocov3():
    torch.manual_seed(0)
    config = MoCoV3Config(projection_dim=8, projection_hidden_dim=16)
    return MoCoV3(_convnet(), config, DATA).train()


@pytest.mark.parametrize("build", [_moco, _mocov3], ids=["moco", "mocov3"])
def test_key_encoder_follows_the_ema_formula_and_keeps_its_own_statistics(build):
    method = build()
    modes = []
    method.key_backbone.register_forward_hook(lambda module, args, out: modes.append(
        module.training))
    _train(method, 2)  # the key encoder's BN statistics move through its own passes
    assert modes and all(modes)  # keys in train mode, as the official code computes them
    with torch.no_grad():
        for parameter in [*method.backbone.parameters(), *method.projection.parameters()]:
            parameter.add_(torch.randn_like(parameter))
    pairs = [(method.key_backbone, method.backbone), (method.key_projection, method.projection)]
    before = [[p.clone() for p in key.parameters()] for key, _ in pairs]
    students = [[p.clone() for p in query.parameters()] for _, query in pairs]
    buffers = [[b.clone() for b in key.buffers()] for key, _ in pairs]
    assert any(b.abs().sum() > 0 for b in buffers[0])
    method.after_optimizer_step(StepInfo(9, 0, 0.5, torch.Generator(), 5,
                                         {"key_momentum": 0.75}))
    for (key, _), old, student, old_buffers in zip(pairs, before, students, buffers,
                                                    strict=True):
        for value, previous, query in zip(key.parameters(), old, student, strict=True):
            torch.testing.assert_close(value, 0.75 * previous + 0.25 * query)
            assert not value.requires_grad
        for value, previous in zip(key.buffers(), old_buffers, strict=True):
            assert torch.equal(value, previous)  # the EMA touches parameters only
    query_statistics = dict(method.backbone.named_buffers())
    for name, value in method.key_backbone.named_buffers():
        if value.is_floating_point():
            assert not torch.equal(value, query_statistics[name]), name


def test_momentum_schedules():
    moco, mocov3 = _moco(), _mocov3()
    constant = moco.schedules()["key_momentum"]
    assert constant.value(0, 0.0, 0, 0.0) == constant.value(99, 1.0, 0, 0.0) == 0.99
    cosine = mocov3.schedules()["key_momentum"]
    assert cosine.value(0, 0.0, 0, 0.0) == 0.99 and cosine.value(99, 1.0, 0, 0.0) == 1.0
    assert abs(cosine.value(50, 0.5, 0, 0.0) - 0.995) < 1e-12


# -- split (shuffled) batch norm ---------------------------------------------------------------


def test_split_batch_norm_normalises_each_group_by_its_own_statistics():
    torch.manual_seed(0)
    split = SplitBatchNorm(5, num_splits=3)
    with torch.no_grad():
        split.weight.uniform_(0.5, 1.5)
        split.bias.normal_()
    references = [nn.BatchNorm2d(5) for _ in range(3)]
    for reference in references:
        reference.load_state_dict(split.state_dict(), strict=True)
    x = (torch.randn(12, 5, 4, 4) * 3 + 1).requires_grad_()
    x_reference = x.detach().clone().requires_grad_()
    weights = torch.randn(12, 5, 4, 4)
    out = split(x.contiguous(memory_format=torch.channels_last))
    expected = torch.cat([bn(part) for bn, part in zip(references, x_reference.chunk(3),
                                                       strict=True)])
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    (out * weights).sum().backward()
    (expected * weights).sum().backward()
    torch.testing.assert_close(x.grad, x_reference.grad, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(split.weight.grad, sum(bn.weight.grad for bn in references))
    # the running statistics: the average of what each group's batch norm recorded
    for name in ("running_mean", "running_var"):
        average = sum(getattr(bn, name) for bn in references) / 3
        torch.testing.assert_close(getattr(split, name), average)
    assert int(split.num_batches_tracked) == 1
    # a whole-batch norm would have normalised differently
    assert not torch.allclose(out, nn.BatchNorm2d(5).train()(x.detach()) * split.weight.view(
        1, -1, 1, 1) + split.bias.view(1, -1, 1, 1), atol=1e-3)


def test_split_batch_norm_is_a_plain_batch_norm_in_its_state_dict_and_in_eval_mode():
    torch.manual_seed(0)
    backbone = _convnet()
    converted = convert_to_split_batch_norm(copy.deepcopy(backbone), 4)
    assert sum(isinstance(m, SplitBatchNorm) for m in converted.modules()) == 5
    x = torch.randn(8, 1, 28, 28)
    converted.train()(x)  # running statistics move
    plain = _convnet()
    plain.load_state_dict(converted.state_dict(), strict=True)
    assert converted.state_dict().keys() == backbone.state_dict().keys()
    assert not any(isinstance(m, SplitBatchNorm) for m in plain.modules())
    torch.testing.assert_close(converted.eval()(x), plain.eval()(x))
    single = convert_to_split_batch_norm(copy.deepcopy(backbone), 1).train()
    torch.testing.assert_close(single(x), backbone.train()(x))  # one split: plain in training


def test_the_key_encoder_sees_shuffled_groups_and_the_query_encoder_fixed_ones():
    method = _moco(batch_norm_splits=4)
    views = method.make_views(Batch(unlabeled=_images(16)), torch.Generator().manual_seed(1))[0]
    keys = method._keys(views, torch.Generator().manual_seed(7))  # [16, 8]
    queries = method._query(views)
    order = torch.randperm(16, generator=torch.Generator().manual_seed(7))
    assert not torch.equal(order, torch.arange(16))
    plain = copy.deepcopy(method)
    for module in plain.modules():
        if isinstance(module, SplitBatchNorm):
            module.num_splits = 1  # each group through a plain batch norm, on its own
    with torch.no_grad():
        for group in order.chunk(4):
            alone = plain.key_projection(plain.key_backbone(views[group]))
            torch.testing.assert_close(keys[group], alone, atol=1e-5, rtol=1e-4)
        for group in torch.arange(16).chunk(4):
            torch.testing.assert_close(queries[group], plain._query(views[group]), atol=1e-5,
                                       rtol=1e-4)


def test_a_batch_that_the_splits_do_not_divide_is_refused():
    method = _moco(batch_norm_splits=8)
    with pytest.raises(UserError, match="multiple of 8"):
        method.make_views(Batch(unlabeled=_images(12)), torch.Generator())


# -- NPID: the memory bank ---------------------------------------------------------------------


def _npid(**options):
    torch.manual_seed(0)
    return NPID(_convnet(), NPIDConfig(**{"embedding_dim": 8, "negatives": 16, **options}),
                DATA).train()


@pytest.mark.parametrize("loss", ["softmax", "nce"])
def test_memory_bank_follows_its_formula_at_the_batch_indices_only(loss):
    method = _npid(loss=loss, proximal_weight=10.0 if loss == "softmax" else 0.0)
    images = _images()
    indices = torch.tensor([3, 17, 0, 39, 8, 21, 30, 12])
    generator = torch.Generator().manual_seed(0)
    inputs = method.make_views(Batch(unlabeled=images[indices], indices=indices), generator)
    with torch.no_grad():  # train mode, same batch: the features the loss will see
        features = F.normalize(method.embedding(method.backbone(inputs[0])), dim=1)
    before = method.memory.bank.clone()
    info = StepInfo(0, 0, 0.0, generator, 5, {})
    losses = method(inputs, info)
    losses["loss"].backward()  # the update after the loss did not break the graph
    bank = method.memory.bank
    expected = F.normalize(0.5 * before[indices] + 0.5 * features, dim=1)
    torch.testing.assert_close(bank[indices], expected, atol=1e-6, rtol=1e-5)
    others = torch.ones(40, dtype=torch.bool)
    others[indices] = False
    assert torch.equal(bank[others], before[others])
    torch.testing.assert_close(bank.norm(dim=1), torch.ones(40))
    assert float(losses["embedding_spread"]) > 0
    if loss == "nce":
        normalizer = float(method.normalizer)
        assert normalizer > 0  # estimated on the first batch ...
        _train(method, 2, values={})
        assert float(method.normalizer) == normalizer  # ... and kept
        assert "normalizer" in method.state_dict()
    torch.testing.assert_close(method.memory.bank.norm(dim=1), torch.ones(40))


def test_npid_refuses_more_images_than_bank_rows():
    method = _npid()
    method.on_epoch_start(SimpleNamespace(num_images=40))
    with pytest.raises(UserError, match="40 rows but the run trains on 41 images"):
        method.on_epoch_start(SimpleNamespace(num_images=41))
    with pytest.raises(UserError, match="number of training images"):
        NPID(_convnet(), NPIDConfig(), DataInfo(1, 28, (0.3,), (0.35,)))


# -- through the engine: two processes, resume, the command line --------------------------------


@pytest.mark.slow
def test_moco_two_processes_equal_one_queue_and_pointer_included(tmp_path):
    # A ViT has no batch norm: split BN is per device by design, so it would differ.
    single = compare_one_and_two_processes(
        tmp_path, "moco", {"queue_size": 40, "projection_dim": 8, "symmetric": True},
        {"name": "vit", "width": 16, "depth": 1, "heads": 2}, steps=3, batch_size=16)
    assert int(single["state"]["queue.pointer"]) == 3 * 2 * 16 % 40


@pytest.mark.slow
def test_mocov3_two_processes_equal_one(tmp_path):
    compare_one_and_two_processes(
        tmp_path, "mocov3", {"projection_dim": 8, "projection_hidden_dim": 16}, CONVNET,
        steps=3, batch_size=16)


@pytest.mark.slow
def test_npid_two_processes_equal_one_memory_bank_included(tmp_path):
    compare_one_and_two_processes(
        tmp_path, "npid", {"embedding_dim": 8}, CONVNET, steps=3, batch_size=16)


SMALL = ["--data", "fashion-mnist-sample", "--max-images", "192", "--batch-size", "32",
         "--width", "4", "--depth", "2", "--feature-dim", "8", "--no-progress"]


def pretrain(out, *extra):
    return main(["pretrain", "--method", "moco", "--out", str(out), *SMALL,
                 "--projection-dim", "8", "--queue-size", "72", *extra])


def test_moco_resume_gives_the_same_weights_queue_and_pointer(tmp_path):
    assert pretrain(tmp_path / "whole", "--epochs", "2") == 0
    assert pretrain(tmp_path / "split", "--epochs", "2", "--stop-after-steps", "5") == 130
    assert main(["pretrain", "--out", str(tmp_path / "split"), "--resume",
                 "--no-progress"]) == 0
    whole = load_checkpoint(tmp_path / "whole")
    resumed = load_checkpoint(tmp_path / "split")
    assert whole["step"] == resumed["step"] == 12
    assert int(whole["model"]["queue.pointer"]) == 12 * 32 % 72
    for name, value in whole["model"].items():
        assert torch.equal(value, resumed["model"][name]), name


def test_npid_resume_gives_the_same_weights_bank_and_normalizer(tmp_path):
    def npid(out, *extra):
        return main(["pretrain", "--method", "npid", "--out", str(out), *SMALL,
                     "--embedding-dim", "8", "--loss", "nce", "--negatives", "16", *extra])

    assert npid(tmp_path / "whole", "--epochs", "2") == 0
    assert npid(tmp_path / "split", "--epochs", "2", "--stop-after-steps", "5") == 130
    assert main(["pretrain", "--out", str(tmp_path / "split"), "--resume",
                 "--no-progress"]) == 0
    whole = load_checkpoint(tmp_path / "whole")["model"]
    resumed = load_checkpoint(tmp_path / "split")["model"]
    assert whole["memory.bank"].shape == (192, 8) and float(whole["normalizer"]) > 0
    for name, value in whole.items():
        assert torch.equal(value, resumed[name]), name


def test_moco_help_shows_its_options_only(capsys):
    with pytest.raises(SystemExit):
        main(["pretrain", "--method", "moco", "--out", "x", "--help"])
    text = capsys.readouterr().out
    assert "--symmetric true|false" in text and "--queue-size" in text
    assert "--batch-norm-splits" in text and "InfoNCE temperature" in text
    assert "NT-Xent" not in text  # SimCLR's options are not shown


@pytest.mark.parametrize(("text", "expected"), [("false", False), ("true", True)])
def test_symmetric_parses(tmp_path, text, expected):
    assert pretrain(tmp_path / "run", "--epochs", "1", "--symmetric", text,
                    "--stop-after-steps", "1") == 130
    config = json.loads((tmp_path / "run/run.json").read_text())["run"]["method_config"]
    assert config["symmetric"] is expected
