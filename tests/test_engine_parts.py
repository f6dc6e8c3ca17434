"""Schedules, stateless sampling, optimiser groups, LARS and atomic checkpoints."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from fewlabels.atomic import atomic_torch_save
from fewlabels.engine.checkpoint import load_checkpoint
from fewlabels.engine.optim import LARS, build_optimizer, parameter_groups
from fewlabels.engine.sampling import StreamSampler
from fewlabels.engine.schedule import warmup_cosine
from fewlabels.errors import UserError


def test_warmup_cosine_endpoints_and_shape():
    schedule = warmup_cosine(1.0, 0.1, total_steps=110, warmup_steps=10)
    assert len(schedule) == 110
    np.testing.assert_allclose(schedule[:10], np.arange(10) / 10)
    assert schedule[10] == pytest.approx(1.0)
    assert schedule[-1] == pytest.approx(0.1)
    # halfway through the decay the cosine is at the midpoint
    assert schedule[10 + 50] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 50 / 99)))
    assert np.all(np.diff(schedule[10:]) <= 1e-12)


def test_sampler_is_stateless_and_covers_each_epoch_once():
    sampler = StreamSampler(num_items=100, global_batch_size=32, seed=3)
    assert sampler.steps_per_epoch == 3
    epoch0 = torch.cat([sampler.indices(s) for s in range(3)])
    assert len(set(epoch0.tolist())) == 96  # drop_last: 4 items wait for the next epoch
    again = StreamSampler(100, 32, seed=3)
    assert torch.equal(again.indices(4), sampler.indices(4))  # no state: resume is exact
    assert not torch.equal(sampler.indices(0), sampler.indices(3))  # a new permutation


def test_sampler_devices_split_the_global_batch():
    sampler = StreamSampler(64, 16, seed=0)
    whole = sampler.indices(5)
    parts = torch.cat([sampler.indices(5, rank=r, world_size=4) for r in range(4)])
    assert torch.equal(whole, parts)


def test_sampler_refuses_a_batch_larger_than_the_data():
    with pytest.raises(UserError, match="smaller --batch-size"):
        StreamSampler(10, 32, seed=0)


def test_no_weight_decay_on_biases_and_norms():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    decayed, plain = parameter_groups(model, weight_decay=0.1)
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert {p.ndim for p in decayed["params"]} == {2, 4}
    assert len(plain["params"]) == 4  # conv bias, BN weight and bias, linear bias
    for name in ("lars", "sgd", "adamw"):
        assert len(build_optimizer(name, model, 0.1, 0.1).param_groups) == 2
    with pytest.raises(UserError, match="choose one of"):
        build_optimizer("adam", model, 0.1, 0.1)


def test_lars_step_by_hand():
    # One 2-vector with weight (3, 4), gradient (0, 1), no weight decay, eta = 0.5:
    # trust = 0.5 * |w| / |g| = 2.5, update = lr * trust * g = 0.1 * 2.5 * (0, 1).
    weight = nn.Parameter(torch.tensor([3.0, 4.0]))
    optimizer = LARS([{"params": [weight], "weight_decay": 0.0, "lars": True}], lr=0.1,
                     trust_coefficient=0.5)
    weight.grad = torch.tensor([0.0, 1.0])
    optimizer.step()
    torch.testing.assert_close(weight.detach(), torch.tensor([3.0, 3.75]))
    # the second step adds momentum 0.9 of the first update direction
    weight.grad = torch.tensor([0.0, 1.0])
    norm = torch.tensor([3.0, 3.75]).norm().item()
    expected = 3.75 - 0.1 * (0.9 * 2.5 + 0.5 * norm)
    optimizer.step()
    assert weight[1].item() == pytest.approx(expected, rel=1e-6)


def test_atomic_save_leaves_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "checkpoint.pt"
    atomic_torch_save({"format": 1, "value": 1}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        atomic_torch_save({"format": 1, "value": Unpicklable()}, path)
    assert load_checkpoint(tmp_path)["value"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temporary left


def test_load_checkpoint_errors_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="no checkpoint"):
        load_checkpoint(tmp_path)
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot read"):
        load_checkpoint(tmp_path)
