"""A 2-process CPU DDP run (gloo) against one process on the same global batch."""


import torch
from torch import nn

from fewlabels.losses import nt_xent_loss
from gloo_processes import run_on_processes

GLOBAL_BATCH = 8


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 4))


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(GLOBAL_BATCH, 6, generator=generator), torch.randn(
        GLOBAL_BATCH, 6, generator=generator)


def _compare_step(rank: int, world: int, out_dir: str) -> None:
    model = nn.parallel.DistributedDataParallel(_model())
    view1, view2 = _data()
    local = slice(rank * GLOBAL_BATCH // world, (rank + 1) * GLOBAL_BATCH // world)
    loss = nt_xent_loss(model(view1[local]), model(view2[local]), temperature=0.3)
    loss.backward()  # DDP averages the parameter gradients over the two processes
    grads = [p.grad.clone() for p in model.parameters()]
    torch.save({"loss": loss.detach(), "grads": grads}, f"{out_dir}/rank{rank}.pt")


def test_gathered_nt_xent_matches_single_process(tmp_path):
    run_on_processes(_compare_step, tmp_path)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]

    model = _model()
    view1, view2 = _data()
    loss = nt_xent_loss(model(view1), model(view2), temperature=0.3)
    loss.backward()

    # The mean of the per-process losses is the global loss ...
    mean_loss = (ranks[0]["loss"] + ranks[1]["loss"]) / 2
    torch.testing.assert_close(mean_loss, loss.detach(), rtol=1e-5, atol=1e-6)
    # ... the two processes' losses differ (each has its own anchors) ...
    assert not torch.allclose(ranks[0]["loss"], ranks[1]["loss"])
    # ... and both hold exactly the single-process gradients.
    for r in range(2):
        for distributed, single in zip(ranks[r]["grads"], model.parameters(), strict=True):
            torch.testing.assert_close(distributed, single.grad, rtol=1e-5, atol=1e-6)
