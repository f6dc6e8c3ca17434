"""End-to-end pretraining through the CLI: a small run, exact resume, interruption, NaN stop."""

import json

import pytest
import torch

from fewlabels.cli import main
from fewlabels.engine.checkpoint import load_checkpoint
from fewlabels.methods import Batch
from fewlabels.runs import build_method

DATA = ["--data", "fashion-mnist-sample", "--max-images", "192", "--batch-size", "32"]
SMALL = [*DATA, "--width", "4", "--depth", "2", "--no-progress", "--projection-hidden-dim", "16",
         "--projection-dim", "8"]


def pretrain(out, *extra):
    return main(["pretrain", "--out", str(out), *SMALL, *extra])


def test_small_run_writes_checkpoint_metrics_and_run_description(tmp_path, capsys):
    assert pretrain(tmp_path / "run", "--epochs", "1") == 0
    checkpoint = load_checkpoint(tmp_path / "run")
    assert checkpoint["finished"] and checkpoint["step"] == checkpoint["total_steps"] == 6
    assert checkpoint["run"]["method"] == "simclr"
    assert checkpoint["run"]["method_config"]["projection_dim"] == 8
    assert checkpoint["run"]["method_config"]["view_size"] == 20  # the default, resolved
    lines = (tmp_path / "run/metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    losses = [r["loss"] for r in records if "loss" in r]
    assert losses and all(loss > 0 for loss in losses)
    assert any(p.name.startswith("events") for p in (tmp_path / "run/tensorboard").iterdir())
    assert json.loads((tmp_path / "run/run.json").read_text())["train"]["recipe"][
        "batch_size"] == 32
    assert "finished: step 6/6" in capsys.readouterr().out


def test_small_views_train_and_the_backbone_still_reads_full_size_images(tmp_path):
    assert pretrain(tmp_path / "run", "--epochs", "1", "--view-size", "12") == 0
    spec = load_checkpoint(tmp_path / "run")["run"]
    assert spec["method_config"]["view_size"] == 12
    method = build_method(spec)
    images = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8)
    views = method.make_views(Batch(unlabeled=images), torch.Generator().manual_seed(0))
    assert views.shape == (6, 1, 12, 12)
    assert method.backbone(torch.zeros(2, 1, 28, 28)).shape == (2, method.backbone.feature_dim)
    default = build_method({**spec, "method_config": {**spec["method_config"], "view_size": 0}})
    assert default.make_views(Batch(unlabeled=images), None).shape == (6, 1, 20, 20)


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path):
    assert pretrain(tmp_path / "whole", "--epochs", "2") == 0
    assert pretrain(tmp_path / "split", "--epochs", "2", "--stop-after-steps", "5") == 130
    interrupted = load_checkpoint(tmp_path / "split")
    assert interrupted["step"] == 5 and not interrupted["finished"]
    assert main(["pretrain", "--out", str(tmp_path / "split"), "--resume", "--no-progress"]) == 0
    whole, resumed = load_checkpoint(tmp_path / "whole"), load_checkpoint(tmp_path / "split")
    assert resumed["step"] == whole["step"] == 12
    for name, value in whole["model"].items():
        assert torch.equal(value, resumed["model"][name]), name
    for group_whole, group_resumed in zip(whole["optimizer"]["state"].values(),
                                          resumed["optimizer"]["state"].values(), strict=True):
        assert torch.equal(group_whole["momentum_buffer"], group_resumed["momentum_buffer"])


def test_budget_minutes_fits_the_schedule_and_stops(tmp_path):
    assert pretrain(tmp_path / "run", "--budget-minutes", "0.05") == 0
    checkpoint = load_checkpoint(tmp_path / "run")
    assert checkpoint["elapsed_seconds"] < 3 + 0.05 * 60
    assert checkpoint["step"] >= 3


def test_nan_loss_stops_with_a_clear_message(tmp_path, capsys):
    assert pretrain(tmp_path / "run", "--epochs", "1", "--lr", "1e30", "--optimizer", "sgd") == 2
    error = capsys.readouterr().err
    assert "the loss became" in error and "lower --lr" in error
    assert error.count("\n") == 1


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--method", "nope"], "unknown method 'nope'; choose one of: "),
        (["--backbone", "nope"], "unknown backbone 'nope'; choose one of:"),
        (["--data", "nope"], "unknown dataset"),
        (["--data", "folder:/no/such/folder"], "no such file or directory"),
        (["--epochs", "0"], "--epochs must be at least 1"),
        (["--lr", "-1"], "--lr must be positive"),
        (["--adamw-betas", "0.9"], "needs 2 comma-separated values"),
        (["--temperature", "warm"], "'warm' is not a number"),
        (["--final-weight-decay", "x"], "'x' is not a number"),
        (["--optimizer", "adam"], "is not one of lars, sgd, adamw"),
        (["--width", "x"], "not a valid int"),
        (["--batch-size", "100000"], "smaller --batch-size"),
        (["--view-size", "21"], "cannot take 21 px views"),
    ],
)
def test_bad_input_is_one_line_and_status_2(tmp_path, capsys, arguments, message):
    status = main(["pretrain", "--out", str(tmp_path / "run"), "--epochs", "1", *DATA,
                   *arguments])
    error = capsys.readouterr().err
    assert status == 2, error
    assert message in error
    assert error.startswith("fewlabels: error:") and error.count("\n") == 1


def test_resume_refuses_another_method_or_a_finished_run(tmp_path, capsys):
    assert pretrain(tmp_path / "run", "--epochs", "1") == 0
    capsys.readouterr()
    assert main(["pretrain", "--out", str(tmp_path / "run"), "--resume",
                 "--backbone", "resnet"]) == 2
    assert "holds a backbone 'convnet' run" in capsys.readouterr().err
    assert main(["pretrain", "--out", str(tmp_path / "run"), "--resume"]) == 2
    assert "has finished" in capsys.readouterr().err
    assert pretrain(tmp_path / "run", "--epochs", "1") == 2  # would overwrite: refused
    assert "already holds a run" in capsys.readouterr().err


def test_sigterm_saves_a_checkpoint_that_resume_continues(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    command = [sys.executable, "-m", "fewlabels.cli", "pretrain", "--out", str(out), *SMALL,
               "--epochs", "200"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (
            not metrics.exists() or len(metrics.read_text().splitlines()) < 2):
        time.sleep(0.2)  # wait until training has logged a few steps
    process.send_signal(signal.SIGTERM)
    _, error = process.communicate(timeout=120)
    assert process.returncode == 130, error.decode()
    assert b"continue with --resume" in error and b"Traceback" not in error
    stopped = load_checkpoint(out)
    assert 10 <= stopped["step"] < stopped["total_steps"] and not stopped["finished"]
    # resume for a few more steps: it starts from the saved step
    assert main(["pretrain", "--out", str(out), "--resume", "--no-progress",
                 "--stop-after-steps", str(stopped["step"] + 2)]) == 130
    assert load_checkpoint(out)["step"] == stopped["step"] + 2


def test_python_dash_m_fewlabels_is_the_command():
    import subprocess
    import sys

    listed = subprocess.run([sys.executable, "-m", "fewlabels", "list", "backbones"],
                            capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0 and "convnet" in listed.stdout
    refused = subprocess.run([sys.executable, "-m", "fewlabels", "pretrain", "--method", "x",
                              "--out", "/nonexistent/run"], capture_output=True, text=True,
                             timeout=120)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr


def test_budget_steps_run_that_many_steps_and_resume_to_the_same_weights(tmp_path, capsys):
    assert pretrain(tmp_path / "whole", "--budget-steps", "4") == 0
    assert pretrain(tmp_path / "split", "--budget-steps", "4", "--stop-after-steps", "2") == 130
    resume = ["pretrain", "--out", str(tmp_path / "split"), "--resume", "--no-progress"]
    assert main([*resume, "--budget-steps", "5"]) == 2
    assert "was started for 4 steps; resume it without --budget-steps" in capsys.readouterr().err
    assert main(resume) == 0
    whole, resumed = load_checkpoint(tmp_path / "whole"), load_checkpoint(tmp_path / "split")
    assert whole["finished"] and whole["step"] == whole["total_steps"] == 4  # not 1 epoch's 6
    for name, value in whole["model"].items():
        assert torch.equal(value, resumed["model"][name]), name


def test_epochs_and_budget_steps_together_are_refused_in_one_line(tmp_path, capsys):
    assert pretrain(tmp_path / "run", "--epochs", "1", "--budget-steps", "4") == 2
    error = capsys.readouterr().err
    assert "--epochs or as --budget-steps, not both" in error and error.count("\n") == 1
    assert not (tmp_path / "run").exists()
