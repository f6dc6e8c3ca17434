"""SwAV: the swapped loss against hand-derived values, codes from Sinkhorn-Knopp over the
queue and the batch, prototypes frozen for the first epoch and unit-norm after every step,
the queue filled in order and used only once full, the method's own clusters, a resumed run
equal to an uninterrupted one, and two processes equal to one."""

import math

import pytest
import torch

import fewlabels.losses.swav as swav_losses
from engine_harness import compare_one_and_two_processes
from fewlabels.cli import main
from fewlabels.clustering.sinkhorn import sinkhorn_knopp
from fewlabels.engine.checkpoint import load_checkpoint
from fewlabels.errors import UserError
from fewlabels.losses.swav import swav_codes, swav_loss
from fewlabels.methods import Batch, DataInfo, StepInfo
from fewlabels.methods.swav import SwAV, SwAVConfig
from fewlabels.models.backbones import build_backbone
from fewlabels.runs import build_method

TINY = {"num_prototypes": 12, "projection_dim": 8, "projection_hidden_dim": 16}
TINY_FLAGS = ["--num-prototypes", "12", "--projection-dim", "8",
              "--projection-hidden-dim", "16"]
DATA = ["--data", "fashion-mnist-sample", "--max-images", "48", "--batch-size", "16",
        "--no-progress", *TINY_FLAGS]
CONVNET = ["--width", "4", "--depth", "2", "--feature-dim", "8"]
PROTOTYPES = "prototypes.prototypes.weight"


def pretrain(out, *extra):
    return main(["pretrain", "--method", "swav", "--out", str(out), *DATA, *CONVNET, *extra])


def _method(**options) -> SwAV:
    torch.manual_seed(0)
    backbone = build_backbone("convnet", in_channels=1, image_size=28, width=4, depth=2)
    return SwAV(backbone, SwAVConfig(**(TINY | options)), DataInfo(1, 28, (0.5,), (0.25,), 0, 64))


def _images(count: int = 4, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (count, 1, 28, 28), generator=generator, dtype=torch.uint8)


def _inputs(method: SwAV, images: torch.Tensor, step: int = 0, epoch: int = 0):
    generator = torch.Generator().manual_seed(step)
    return (method.make_views(Batch(unlabeled=images), generator),
            StepInfo(step, epoch, 0.0, generator, 3))


# -- the loss ---------------------------------------------------------------------------------


def test_swapped_loss_against_hand_derived_values():
    # One image, K = 2, tau = 0.1. Predictions p1 = (1/2, 1/2), p2 = (3/4, 1/4) and, for a
    # third (local) view, p3 = (1/4, 3/4); codes q1 = (1, 0), q2 = (1/2, 1/2).
    tau = 0.1
    scores = torch.tensor([[0.0, 0.0], [math.log(3), 0.0], [0.0, math.log(3)]]) * tau
    scores.requires_grad_(True)
    codes = torch.tensor([[1.0, 0.0], [0.5, 0.5]], requires_grad=True)
    # Two views: (H(q1, p2) + H(q2, p1)) / 2 = (log 4/3 + log 2) / 2.
    loss = swav_loss(scores[:2], codes, tau, 2)
    torch.testing.assert_close(loss, torch.tensor(0.5 * math.log(8 / 3)))
    loss.backward()
    # d/dz of H(q, softmax(z / tau)) / 2 is (p - q) / (2 tau): view 2 gets (3/4 - 1, 1/4) / 0.2;
    # view 1 predicts the uniform code exactly: no gradient. The codes get none.
    torch.testing.assert_close(scores.grad[:2], torch.tensor([[0.0, 0.0], [-1.25, 1.25]]))
    assert codes.grad is None
    # Three views: each global code is predicted by the two other views, the 4 pairs averaged:
    # H(q1, p2) = log 4/3, H(q1, p3) = log 4, H(q2, p1) = log 2, H(q2, p3) = log(16/3) / 2.
    expected = (math.log(4 / 3) + math.log(4) + math.log(2) + 0.5 * math.log(16 / 3)) / 4
    torch.testing.assert_close(swav_loss(scores, codes, tau, 2), torch.tensor(expected))


def test_swapped_loss_equals_the_papers_loop_over_views():
    generator = torch.Generator().manual_seed(0)
    images, views, clusters = 5, 4, 7
    scores = torch.randn(views * images, clusters, generator=generator)
    codes = torch.softmax(torch.randn(2 * images, clusters, generator=generator), dim=1)
    total = 0.0
    for g in range(2):
        q = codes[g * images:(g + 1) * images]
        sub = 0.0
        for v in range(views):
            if v != g:
                log_p = torch.log_softmax(scores[v * images:(v + 1) * images] / 0.1, dim=1)
                sub = sub - (q * log_p).sum(dim=1).mean()
        total = total + sub / (views - 1)
    torch.testing.assert_close(swav_loss(scores, codes, 0.1, 2), total / 2)


def test_codes_are_sinkhorn_over_the_queue_and_the_batch_keeping_the_batch_rows():
    generator = torch.Generator().manual_seed(1)
    scores = torch.randn(6, 5, generator=generator)  # 2 views of 3 images
    queues = [torch.randn(10, 5, generator=generator) for _ in range(2)]
    codes = swav_codes(scores, 2, epsilon=0.05, iterations=3)
    for view in range(2):
        part = scores[3 * view: 3 * view + 3]
        torch.testing.assert_close(codes[3 * view: 3 * view + 3], sinkhorn_knopp(part, 0.05, 3))
    with_queue = swav_codes(scores, 2, 0.05, 3, queue_scores=queues)
    for view in range(2):
        both = torch.cat([queues[view], scores[3 * view: 3 * view + 3]])
        torch.testing.assert_close(with_queue[3 * view: 3 * view + 3],
                                   sinkhorn_knopp(both, 0.05, 3)[-3:])
    torch.testing.assert_close(with_queue.sum(dim=1), torch.ones(6))


# -- prototypes -------------------------------------------------------------------------------


def test_prototypes_get_no_gradient_during_the_freeze_and_are_renormalised_after_a_step():
    method = _method(freeze_prototypes_epochs=1.0)
    for step, frozen in ((2, True), (3, False)):  # 3 steps an epoch
        method.zero_grad(set_to_none=True)
        inputs, info = _inputs(method, _images(), step)
        method.training_loss(inputs, info)["loss"].backward()
        assert method.prototypes.prototypes.weight.grad.abs().sum() > 0
        method.before_optimizer_step(info)
        assert (method.prototypes.prototypes.weight.grad is None) == frozen
        assert method.projection.layers[0].weight.grad is not None
    with torch.no_grad():
        method.prototypes.prototypes.weight.mul_(3.0)
    method.after_optimizer_step(info)
    torch.testing.assert_close(method.prototypes.prototypes.weight.norm(dim=1), torch.ones(12))


# -- the queue --------------------------------------------------------------------------------


def test_the_queue_fills_in_order_from_its_epoch_and_is_used_once_full(monkeypatch):
    method = _method(queue_length=12, queue_start_epoch=1)
    rows_seen: list[torch.Tensor] = []

    def recording_sinkhorn(scores, *args, **kwargs):
        rows_seen.append(scores.clone())
        return sinkhorn_knopp(scores, *args, **kwargs)

    monkeypatch.setattr(swav_losses, "sinkhorn_knopp", recording_sinkhorn)
    initial = [queue.queue.clone() for queue in method.queues]
    inputs, info = _inputs(method, _images(seed=0), step=0, epoch=0)
    method.training_loss(inputs, info)
    assert int(method.queue_filled) == 0  # before its epoch: not filled
    for queue, before in zip(method.queues, initial, strict=True):
        assert torch.equal(queue.queue, before)

    enqueued = []
    for step in range(1, 5):  # 4 images (8 global rows) a step into 12 rows
        inputs, info = _inputs(method, _images(seed=step), step=step, epoch=1)
        with torch.no_grad():
            embeddings = method.embed(inputs[0])  # train-mode BN: what the step computes
            queue_scores = [method.prototypes(q.queue.clone()) for q in method.queues]
        rows_seen.clear()
        in_use = method.queue_in_use()
        result = method.training_loss(inputs, info)
        assert float(result["queue_in_use"]) == float(in_use)
        enqueued.append(embeddings)
        assert int(method.queue_filled) == min(4 * step, 12)
        # Used only once full (after the third step): then 12 queue rows + 4 batch rows, the
        # queue's rows scored by the current prototypes before this batch was enqueued.
        assert in_use == (step == 4)
        assert [len(rows) for rows in rows_seen] == [16 if in_use else 4] * 2
        if in_use:
            for view in range(2):
                torch.testing.assert_close(rows_seen[view][:12], queue_scores[view])
    for view, queue in enumerate(method.queues):  # oldest first: the last 12 embeddings
        expected = torch.cat([e[4 * view: 4 * view + 4] for e in enqueued[1:]])
        torch.testing.assert_close(queue.ordered(), expected, rtol=1e-5, atol=1e-6)


def test_prototypes_frozen_in_the_first_epoch_then_unit_norm_and_resume_is_exact(tmp_path):
    # 3 steps an epoch; a queue of 24 full after 2 global batches of 16 and used from the
    # third step, so the resumed run must restore it to match.
    queue = ["--queue-length", "24", "--queue-start-epoch", "0", "--epochs", "2"]
    assert pretrain(tmp_path / "whole", *queue) == 0
    split = tmp_path / "split"
    assert pretrain(split, *queue, "--stop-after-steps", "3") == 130
    after_one = load_checkpoint(split)["model"]
    torch.manual_seed(0)
    fresh = build_method(load_checkpoint(split)["run"]).state_dict()
    torch.testing.assert_close(after_one[PROTOTYPES], fresh[PROTOTYPES], rtol=0, atol=1e-6)
    assert not torch.equal(after_one["projection.layers.0.weight"],
                           fresh["projection.layers.0.weight"])
    assert int(after_one["queue_filled"]) == 24
    assert main(["pretrain", "--out", str(split), "--resume", "--no-progress"]) == 0
    whole, resumed = load_checkpoint(tmp_path / "whole")["model"], load_checkpoint(split)["model"]
    assert whole.keys() == resumed.keys() and "queues.0.queue" in whole
    for name, value in whole.items():
        assert torch.equal(value, resumed[name]), name
    final = whole[PROTOTYPES]
    assert (final - fresh[PROTOTYPES]).abs().max() > 1e-5  # LARS: small steps, but steps
    torch.testing.assert_close(final.norm(dim=1), torch.ones(12))


# -- the rest ---------------------------------------------------------------------------------


def test_cluster_heads_give_the_prototypes_scores():
    method = _method().eval()
    head = method.cluster_heads()["prototypes"]
    images = torch.randn(5, 1, 28, 28)
    with torch.no_grad():
        scores = head(images)
        expected = method.prototypes(method.embed(images))
    assert scores.shape == (5, 12)
    torch.testing.assert_close(scores, expected)
    assert float(scores.abs().max()) <= 1 + 1e-5  # cosines with unit prototypes


def test_bad_options_are_user_errors():
    with pytest.raises(UserError, match="epsilon"):
        SwAVConfig(epsilon=0.0)
    with pytest.raises(UserError, match="queue-length"):
        SwAVConfig(queue_length=-1)


def test_help_shows_swav_options(capsys):
    with pytest.raises(SystemExit):
        main(["pretrain", "--method", "swav", "--out", "x", "--help"])
    text = capsys.readouterr().out
    assert "--num-prototypes" in text and "--freeze-prototypes-epochs" in text
    assert "--queue-length" in text and "--teacher-momentum" not in text


@pytest.mark.slow
def test_two_processes_equal_one(tmp_path):
    # 4 steps an epoch (64 images, batch 16): the prototypes frozen for 2 steps, the queue of
    # 24 full after 2 steps and used from the third, with two local views.
    compare_one_and_two_processes(
        tmp_path, "swav", TINY | {"local_views": 2, "queue_length": 24, "queue_start_epoch": 0,
                                  "freeze_prototypes_epochs": 0.5},
        {"name": "convnet", "width": 4, "depth": 2, "feature_dim": 8}, steps=5, batch_size=16)
