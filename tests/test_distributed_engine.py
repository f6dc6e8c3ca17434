"""Two gloo processes through the real training engine equal one process on the global batch:
the losses, the weights after several optimiser steps (so the gradients) and every buffer
(batch-norm statistics, queues, centres, memory banks)."""

import pytest

from engine_harness import compare_one_and_two_processes

CONVNET = {"name": "convnet", "width": 4, "depth": 2, "feature_dim": 16}


@pytest.mark.slow
def test_simclr_with_global_batch_norm(tmp_path):
    compare_one_and_two_processes(
        tmp_path, "simclr", {"projection_hidden_dim": 16, "projection_dim": 8}, CONVNET)
