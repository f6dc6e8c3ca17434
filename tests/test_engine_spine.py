"""The engine's contract with a method, through a probe method that records every call:
hooks in order, schedules, parameter options, clipping, teacher modes, batch indices,
representations, the collapse monitor, per-method options, progress lines and warnings."""

import copy
import json
import math
from types import SimpleNamespace

import pytest
import torch
from lightning_fabric import Fabric

from fewlabels.cli import main
from fewlabels.data.imageset import ImageSet
from fewlabels.engine import trainer as trainer_module
from fewlabels.engine.checkpoint import load_checkpoint
from fewlabels.engine.epoch_work import optimizer_state_resetter
from fewlabels.engine.metrics import Progress
from fewlabels.engine.trainer import TrainConfig, Trainer
from fewlabels.errors import UserError
from fewlabels.runs import backbone_spec, build_method, data_info, load_pretrained, method_config
from probe_method import Probe, probe_registered

TINY = ["--width", "4", "--depth", "2", "--feature-dim", "8", "--no-progress"]
DATA = ["--data", "fashion-mnist-sample", "--max-images", "24", "--batch-size", "8"]


def _images(count: int = 24) -> torch.Tensor:
    return torch.randint(0, 256, (count, 1, 28, 28), generator=torch.Generator().manual_seed(0),
                         dtype=torch.uint8)


def _trainer(tmp_path, images, **config_changes) -> Trainer:
    info = data_info(ImageSet(images, None, [], "probe"))
    spec = {"method": "probe", "method_config": method_config("probe", {}),
            "backbone": backbone_spec("convnet", 4, 2, feature_dim=8),
            "data": {"spec": "probe", "info": info.__dict__ | {"mean": list(info.mean),
                                                                "std": list(info.std)}}}
    fabric = Fabric(accelerator="cpu", devices=1, precision="32-true")
    torch.manual_seed(0)
    method = build_method(spec)
    config = TrainConfig(run_dir=tmp_path, recipe=Probe.recipe, progress=False,
                         tensorboard=False, **config_changes)
    return Trainer(method, images, config, spec, fabric)


def test_every_hook_is_called_in_order_with_the_step_values(tmp_path):
    with probe_registered():
        trainer = _trainer(tmp_path, _images())
        trainer.run()
    method = trainer.method
    steps = 9  # 24 images, batch 8: 3 steps an epoch, 3 epochs
    kinds = [call[0] for call in method.calls]
    expected = []
    for step in range(steps):
        expected += ["epoch"] * (step % 3 == 0) + ["loss", "before_step", "after_step"]
    assert kinds == expected
    losses = [call for call in method.calls if call[0] == "loss"]
    assert [call[2] for call in losses] == pytest.approx([s / (steps - 1) for s in range(steps)])
    momenta = [call[3]["teacher_momentum"] for call in losses]
    assert momenta[0] == 0.9 and momenta[-1] == 1.0
    assert all(b >= a for a, b in zip(momenta, momenta[1:], strict=False))
    # the learning rate warms up for an epoch, then decays to 0; the weight decay is constant
    rates = [call[3]["learning_rate"] for call in losses]
    peak = 0.1 * 8 / 256
    assert rates[:4] == pytest.approx([0, peak / 3, 2 * peak / 3, peak]) and rates[-1] == 0
    assert {call[3]["weight_decay"] for call in losses} == {0.01}
    # gradients are clipped per tensor before the method sees them
    assert all(call[2] <= 0.5 + 1e-4 for call in method.calls if call[0] == "before_step")
    assert all(method.images_seen) and len(method.images_seen) == steps
    assert method.teacher_modes == [False] * steps  # the teacher stays in eval mode
    # the fixed group keeps its peak rate and gets no weight decay
    groups = trainer.optimizer.param_groups
    fixed = next(g for g in groups if not g["scheduled"])
    assert fixed["lr"] == pytest.approx(peak) and fixed["weight_decay"] == 0.0
    assert {id(p) for p in fixed["params"]} == {id(p) for p in method.fixed.parameters()}
    decayed = next(g for g in groups if g["decayed"])
    assert decayed["lr"] == 0.0 and decayed["weight_decay"] == 0.01


def test_epoch_work_sees_every_image_with_a_seeded_generator_and_is_logged(tmp_path):
    images = _images()
    with probe_registered():
        trainer = _trainer(tmp_path / "a", images)
        method = trainer.method
        backbone = copy.deepcopy(method.backbone).eval()
        trainer.run()
        again = _trainer(tmp_path / "b", images)
        again.run()
    # the features of every image in dataset order, from the backbone in eval mode
    mean, std = method.data.mean[0], method.data.std[0]
    with torch.no_grad():
        expected = backbone((images.float() / 255 - mean) / std)
    torch.testing.assert_close(method.epoch_features[0], expected)
    assert len(method.epoch_features) == 3
    # one generator per epoch, seeded from the run's seed and the epoch
    draws = method.epoch_draws
    assert not torch.equal(draws[0], draws[1])
    for mine, theirs in zip(draws, again.method.epoch_draws, strict=True):
        assert torch.equal(mine, theirs)
    # one record per epoch, with the work's own time
    records = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").open()]
    work = [r for r in records if r.get("event") == "epoch_work"]
    assert [(r["step"], r["epoch"], r["probe_number"]) for r in work] == [
        (0, 0, 24.0), (3, 1, 24.0), (6, 2, 24.0)]
    assert all(r["epoch_work_seconds"] > 0 for r in work)


def test_epoch_work_resets_optimizer_state_and_is_not_redone_within_an_epoch(tmp_path):
    with probe_registered():
        trainer = _trainer(tmp_path, _images(), stop_after_steps=4)
        with pytest.raises(trainer_module.TrainingInterrupted):
            trainer.run()
        state = trainer.optimizer.optimizer.state
        head = list(trainer.method.head.parameters())
        assert all(p in state for p in head)
        optimizer_state_resetter(trainer.optimizer)(head)
        assert not any(p in state for p in head)
        assert next(trainer.method.backbone.parameters()) in state  # the others keep theirs
        resumed = _trainer(tmp_path, _images(), resume=True)
        resumed.run()
    kinds = [call[0] for call in resumed.method.calls]
    # step 4 is within epoch 1: no epoch work until epoch 2 starts at step 6
    assert kinds[:7] == ["loss", "before_step", "after_step"] * 2 + ["epoch"]
    assert [c[1] for c in resumed.method.calls if c[0] == "epoch"] == [2]


def test_a_budget_on_a_fake_clock_gives_a_monotone_momentum_from_start_to_end(
        tmp_path, monkeypatch):
    """Steps take 1 s, then 0.25 s: the momentum follows the time spent, from its first value
    at step 0 to (almost) its last at the end of the budget, never jumping."""
    clock = SimpleNamespace(now=0.0, steps=0)
    monkeypatch.setattr(trainer_module, "time", SimpleNamespace(perf_counter=lambda: clock.now))
    real_step = Trainer._training_step

    def timed_step(self):
        clock.steps += 1
        clock.now += 1.0 if clock.steps <= 5 else 0.25
        return real_step(self)

    monkeypatch.setattr(Trainer, "_training_step", timed_step)
    with probe_registered():
        trainer = _trainer(tmp_path, _images(), budget_minutes=0.5)
        result = trainer.run()
    momenta = [call[2] for call in trainer.method.calls if call[0] == "after_step"]
    budget = 30 * 0.98
    assert result.step == 5 + math.ceil((budget - 5) / 0.25)
    assert momenta[0] == 0.9
    assert all(b >= a for a, b in zip(momenta, momenta[1:], strict=False))
    last_progress = (5 + (result.step - 6) * 0.25) / budget  # when the last step started
    assert momenta[-1] == pytest.approx(1 - 0.05 * (1 + math.cos(math.pi * last_progress)))
    assert load_checkpoint(tmp_path)["finished"]


def test_epoch_work_the_budget_has_no_time_for_is_skipped(tmp_path, monkeypatch):
    """Steps take 1 s and every epoch's work 8 s, in a budget of 29.4 s (3 steps an epoch):
    work at 0 s and 11 s; at 22 s the work would end at 30 s, after the budget: skipped."""
    clock = SimpleNamespace(now=0.0)
    monkeypatch.setattr(trainer_module, "time", SimpleNamespace(perf_counter=lambda: clock.now))
    real_step, real_work = Trainer._training_step, Probe.on_epoch_start

    def timed_step(self):
        clock.now += 1.0
        return real_step(self)

    def timed_work(self, context):
        clock.now += 8.0
        self.progresses.append(context.progress)
        return real_work(self, context)

    monkeypatch.setattr(Trainer, "_training_step", timed_step)
    monkeypatch.setattr(Probe, "on_epoch_start", timed_work)
    monkeypatch.setattr(Probe, "progresses", [], raising=False)
    with probe_registered():
        trainer = _trainer(tmp_path, _images(), budget_minutes=0.5)
        result = trainer.run()
    assert [c[1] for c in trainer.method.calls if c[0] == "epoch"] == [0, 1]
    assert trainer.method.progresses == pytest.approx([0.0, 11 / 29.4])
    assert result.step == 6 + 8  # steps until 22 s + 8 s = 30 s >= 29.4 s
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").open()]
    skipped = [r for r in records if r.get("event") == "epoch_work_skipped"]
    assert [(r["step"], r["epoch"]) for r in skipped] == [(6, 2), (9, 3), (12, 4)]
    work = [r for r in records if r.get("event") == "epoch_work"]
    assert [r["epoch_work_seconds"] for r in work] == [8.0, 8.0]


def test_collapse_stops_the_run_with_one_line(tmp_path, capsys):
    with probe_registered():
        status = main(["pretrain", "--method", "probe", "--out", str(tmp_path / "run"), *DATA,
                       *TINY, "--epochs", "60", "--collapse", "true"])
    error = capsys.readouterr().err
    assert status == 2
    assert error.startswith("fewlabels: error: probe collapsed at step") and error.count("\n") == 1
    assert "this is the probe's hint" in error
    records = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").open()]
    assert records[-1]["event"] == "collapsed"
    # 3 warm-up steps, then 10 checks every 10 steps below the threshold
    assert records[-1]["step"] == 100


def test_method_options_never_collide_and_parse_as_typed(tmp_path, capsys):
    with probe_registered():
        with pytest.raises(SystemExit):
            main(["pretrain", "--method", "probe", "--out", "x", "--help"])
        help_text = capsys.readouterr().out
        assert "--probe-batch-size" in help_text and "--probe-feature-dim" in help_text
        assert "--symmetric true|false" in help_text and "--crop-scale FLOAT,FLOAT" in help_text
        assert "--temperature" not in help_text  # SimCLR's option
        out = tmp_path / "run"
        assert main(["pretrain", "--method", "probe", "--out", str(out), *DATA, *TINY,
                     "--epochs", "1", "--probe-batch-size", "3", "--probe-feature-dim", "2",
                     "--symmetric", "false", "--crop-scale", "0.3,1", "--limit", "none"]) == 0
        stored = json.loads((out / "run.json").read_text())
        assert stored["run"]["method_config"] == {
            "batch_size": 3, "feature_dim": 2, "symmetric": False, "crop_scale": [0.3, 1.0],
            "limit": None, "base_momentum": 0.9, "collapse": False}
        assert stored["train"]["recipe"]["batch_size"] == 8  # the engine's, untouched
        assert stored["run"]["backbone"]["options"]["feature_dim"] == 8
        assert stored["run"]["representation"] == "teacher"
        # the representation a run declares is what evaluation loads, unless told otherwise
        pretrained = load_pretrained(out)
        assert pretrained.representation == "teacher"
        assert load_pretrained(out, "backbone").representation == "backbone"
        with pytest.raises(UserError, match="no representation 'head'"):
            load_pretrained(out, "head")
        capsys.readouterr()
        assert main(["pretrain", "--method", "probe", "--out", str(tmp_path / "bad"), *DATA,
                     *TINY, "--limit", "many"]) == 2
        assert "'many' is not an integer" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["pretrain", "--out", "x", "--help"])
    assert "--probe-batch-size" not in capsys.readouterr().out


def test_resume_refuses_changed_settings(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["pretrain", "--out", str(out), *DATA, *TINY, "--epochs", "2",
                 "--projection-hidden-dim", "8", "--projection-dim", "4",
                 "--stop-after-steps", "2"]) == 130
    capsys.readouterr()
    assert main(["pretrain", "--out", str(out), "--resume", "--temperature", "0.2"]) == 2
    assert "leave out --temperature" in capsys.readouterr().err
    assert main(["pretrain", "--out", str(out), "--resume", "--lr", "0.2"]) == 2
    assert "leave out --learning-rate" in capsys.readouterr().err


def test_progress_in_a_log_prints_a_line_every_few_percent():
    lines = []
    stream = SimpleNamespace(write=lines.append, flush=lambda: None, isatty=lambda: False)
    progress = Progress(True, 200, 0, every_percent=5.0, stream=stream)
    for step in range(1, 201):
        progress.update(step, 200, step / 200, {"loss": 1.0})
    printed = [line for line in lines if line.strip()]
    assert len(printed) == 20
    assert printed[0].startswith("step 10/200 (5%)") and "\r" not in "".join(lines)


def test_a_skipped_image_warns_in_one_clean_line(tmp_path, capsys):
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    for index in range(10):
        Image.new("L", (32, 32), color=index * 20).save(folder / f"{index}.png")
    (folder / "broken.png").write_bytes(b"not an image")
    assert main(["pretrain", "--out", str(tmp_path / "run"), "--data", f"folder:{folder}",
                 "--batch-size", "4", *TINY, "--epochs", "1", "--projection-hidden-dim", "8",
                 "--projection-dim", "4"]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and warnings[0].startswith("fewlabels: warning: ")
    assert "warnings.warn" not in warnings[0] and "broken.png" in warnings[0]


def test_list_methods_names_every_method_with_its_paper(capsys):
    from fewlabels.methods import METHODS
    from fewlabels.semi import SEMI_METHODS

    assert main(["list", "methods"]) == 0
    out = capsys.readouterr().out
    pretraining, classifiers = out.split("\n\n")
    for section, registry in ((pretraining, METHODS), (classifiers, SEMI_METHODS)):
        heading, *lines = section.splitlines()
        assert heading.endswith("--method NAME):")
        assert [line.split()[0] for line in lines] == registry.names()
        for line, name in zip(lines, registry.names(), strict=True):
            paper = registry.get(name).paper
            assert paper and line.endswith(f"({paper})") and line.count(paper) == 1, line
    assert {"simclr", "moco", "mocov3", "npid", "byol", "simsiam", "dino"} <= set(METHODS)


def test_budget_steps_set_the_run_length_and_the_schedules_whatever_the_epochs(tmp_path):
    """5 steps of a recipe with 3 epochs of 3 steps: the run stops at step 5, progress is
    step / 4 and the learning rate reaches its final value 0 on the last step; minutes given
    as well do not take the schedules over."""
    with probe_registered():
        trainer = _trainer(tmp_path, _images(), budget_steps=5, budget_minutes=60)
        result = trainer.run()
    assert result.step == result.total_steps == 5 and result.finished
    losses = [call for call in trainer.method.calls if call[0] == "loss"]
    assert [call[2] for call in losses] == pytest.approx([0, 0.25, 0.5, 0.75, 1])
    rates = [call[3]["learning_rate"] for call in losses]
    assert rates[-1] == 0 and rates[3] == pytest.approx(0.1 * 8 / 256)  # warm-up: 3 steps
    assert load_checkpoint(tmp_path)["train"]["budget_steps"] == 5
