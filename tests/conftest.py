"""Shared test fixtures: one tiny pretraining run, made once per test session."""

from __future__ import annotations

import shutil

import pytest

from fewlabels.cli import main

# A SimCLR run small enough to pretrain in seconds: 128 sample images, a 4-wide ConvNet.
TINY_PRETRAIN = ["--data", "fashion-mnist-sample", "--max-images", "128", "--batch-size", "32",
                 "--width", "4", "--depth", "2", "--no-progress", "--projection-hidden-dim",
                 "16", "--projection-dim", "8", "--epochs", "1"]


@pytest.fixture(scope="session")
def shared_tiny_run(tmp_path_factory):
    """The tiny run, pretrained once; tests use a copy (:func:`tiny_run_copy`)."""
    out = tmp_path_factory.mktemp("tiny_pretrain") / "run"
    assert main(["pretrain", "--out", str(out), *TINY_PRETRAIN]) == 0
    return out


@pytest.fixture(scope="module")
def run_dir(shared_tiny_run, tmp_path_factory):
    """A module's own copy of the tiny run, so what one module writes into it (evaluation
    results, feature caches) never reaches another."""
    out = tmp_path_factory.mktemp("run_copy") / "run"
    shutil.copytree(shared_tiny_run, out)
    return out
