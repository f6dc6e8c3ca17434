"""Schedules, stateless sampling, optimiser groups, LARS, atomic checkpoints and the memory
layout training picks."""

import math

import pytest
import torch
from torch import nn

from fewlabels.atomic import atomic_torch_save
from fewlabels.engine.checkpoint import load_checkpoint
from fewlabels.engine.optim import LARS, build_optimizer, parameter_groups
from fewlabels.engine.run_control import runs_channels_last
from fewlabels.engine.sampling import StreamSampler
from fewlabels.engine.schedule import Schedule, TrainingClock
from fewlabels.errors import UserError
from fewlabels.models.convnet import ConvNet
from fewlabels.models.resnet import BasicBlock, ResNet


def _values(schedule, clock, steps, seconds_per_step=None):
    values = []
    for step in range(steps):
        elapsed = 0.0 if seconds_per_step is None else sum(seconds_per_step[:step])
        clock.advance(step, elapsed)
        values.append(clock.value(schedule))
    return values


def test_warmup_cosine_by_epochs_endpoints_and_shape():
    schedule = Schedule.warmup_cosine(1.0, 0.1, warmup_epochs=1)  # 10 steps per epoch
    values = _values(schedule, TrainingClock(10, total_steps=110), 110)
    assert values[:10] == pytest.approx([step / 10 for step in range(10)])
    assert values[10] == pytest.approx(1.0)
    assert values[-1] == pytest.approx(0.1)
    # the cosine runs over the progress from the warm-up's end (10/109) to 1
    t = (60 / 109 - 10 / 109) / (1 - 10 / 109)
    assert values[60] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))
    assert all(b <= a + 1e-12 for a, b in zip(values[10:], values[11:], strict=False))


def test_schedule_shapes_by_hand():
    clock = TrainingClock(4, total_steps=5)  # progress 0, 1/4, 1/2, 3/4, 1
    assert _values(Schedule(2.0), clock, 5) == [2.0] * 5
    assert _values(Schedule(0.0, 1.0, "linear"), clock, 5) == pytest.approx(
        [0, 0.25, 0.5, 0.75, 1])
    assert _values(Schedule(0.99, 1.0, "cosine"), clock, 5)[2] == pytest.approx(0.995)
    fixmatch = _values(Schedule(1.0, shape="fixmatch"), clock, 5)
    assert fixmatch == pytest.approx([math.cos(7 * math.pi * k / 16 / 4) for k in range(5)])
    # DINO's teacher temperature: 0.04 -> 0.07 over one epoch (4 steps), then constant
    temperature = _values(Schedule.warmup_constant(0.04, 0.07, 1), clock, 5)
    assert temperature == pytest.approx([0.04, 0.0475, 0.055, 0.0625, 0.07])


def test_budget_schedule_follows_the_time_spent_and_never_jumps():
    """Under a budget, progress is the fraction of time spent: the value starts at its first
    value and ends at its last however the pace changes, and is monotone."""
    seconds = [1.0] * 10 + [0.25] * 80  # slow steps, then fast ones: 30 s in all
    clock = TrainingClock(5, budget_seconds=30.0)
    momentum = _values(Schedule(0.99, 1.0, "cosine"), clock, 90, seconds)
    assert momentum[0] == 0.99
    assert all(b >= a for a, b in zip(momentum, momentum[1:], strict=False))
    # the last step starts 0.25 s before the end: progress 119/120, cosine all but at its end
    assert momentum[-1] == pytest.approx(1.0 - 0.01 * (1 + math.cos(math.pi * 119 / 120)) / 2)
    # a warm-up of one epoch (5 steps) ends where the clock was at step 5, and the cosine
    # continues from there without a jump
    clock = TrainingClock(5, budget_seconds=30.0)
    rate = _values(Schedule.warmup_cosine(1.0, 0.0, 1), clock, 90, seconds)
    assert rate[:6] == pytest.approx([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    assert clock.warmup_ends == {5: pytest.approx(5 / 30)}
    assert all(b <= a for a, b in zip(rate[5:], rate[6:], strict=False))
    t = (29.75 / 30 - 5 / 30) / (1 - 5 / 30)  # the last step's place on the cosine
    assert rate[-1] == pytest.approx((1 + math.cos(math.pi * t)) / 2) and rate[-1] < 3e-4
    resumed = TrainingClock(5, budget_seconds=30.0)
    resumed.load_state_dict(clock.state_dict())
    resumed.advance(50, sum(seconds[:50]))
    clock.advance(50, sum(seconds[:50]))
    assert resumed.value(Schedule.warmup_cosine(1.0, 0.0, 1)) == clock.value(
        Schedule.warmup_cosine(1.0, 0.0, 1))


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
    assert decayed["lars"] and not plain["lars"] and not plain["decayed"]
    assert {p.ndim for p in decayed["params"]} == {2, 4}
    assert len(plain["params"]) == 4  # conv bias, BN weight and bias, linear bias
    for name in ("lars", "sgd", "adamw"):
        assert len(build_optimizer(name, model, 0.1, 0.1).param_groups) == 2
    with pytest.raises(UserError, match="choose one of"):
        build_optimizer("adam", model, 0.1, 0.1)
    # the papers' SGD has plain momentum; Nesterov's is an option
    assert not build_optimizer("sgd", model, 0.1).param_groups[0]["nesterov"]
    assert build_optimizer("sgd", model, 0.1, nesterov=True).param_groups[0]["nesterov"]


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


def test_narrow_strided_1x1_convolutions_keep_the_contiguous_layout():
    """oneDNN's AVX2 kernel for a strided 1×1 convolution's weight gradient hangs channels_last
    below 8 input channels: such a network trains contiguous, every other one channels_last."""
    assert not runs_channels_last(ResNet(BasicBlock, [1, 1], 1, width=4))  # 4-channel shortcut
    assert runs_channels_last(ResNet(BasicBlock, [1, 1], 1, width=8))
    assert runs_channels_last(ResNet(BasicBlock, [1], 1, width=4))  # no strided shortcut
    assert runs_channels_last(ConvNet(1, width=4, depth=2, feature_dim=8))
    assert not runs_channels_last(nn.Sequential(nn.Linear(4, 4)))
