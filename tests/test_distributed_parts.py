"""The parts of MoCo, NPID, DINO and Barlow Twins in a 2-process gloo run equal one process on
the global batch: losses, gradients, DINO's centre and monitors, the queue and the bank; and
the engine's features of every training image, sharded and gathered.

One spawn runs every check (starting processes is the slow part); the workers save what they
computed and the test compares it with a single process on the whole batch.
"""


import torch
from torch import nn

from fewlabels.distributed import (
    all_reduce_mean_no_gradient,
    all_reduce_sum_with_gradient,
)
from fewlabels.engine.epoch_work import sharded_features
from fewlabels.losses import moco_batch_loss, teacher_entropy, updated_center
from fewlabels.models.memory import FeatureQueue, MemoryBank
from gloo_processes import run_on_processes

GLOBAL_BATCH = 8
WORLD = 2
CENTER_ROWS = (3, 5)  # unequal local batches of teacher logits: the centre is still exact


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 4))


def _data() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return {
        "view1": torch.randn(GLOBAL_BATCH, 6, generator=generator),
        "view2": torch.randn(GLOBAL_BATCH, 6, generator=generator),
        "teacher_logits": torch.randn(sum(CENTER_ROWS), 5, generator=generator),
        "center": torch.randn(1, 5, generator=generator),
        "keys": torch.randn(3, GLOBAL_BATCH, 4, generator=generator),  # three steps of keys
        "bank_features": torch.randn(GLOBAL_BATCH, 4, generator=generator),
        "bank_indices": torch.randperm(20, generator=generator)[:GLOBAL_BATCH],
        "images": torch.randint(0, 256, (7, 1, 3, 3), generator=generator, dtype=torch.uint8),
    }


def _image_features(images: torch.Tensor) -> torch.Tensor:
    """Features of 7 images (shards of 4 and 3 on two processes) in batches of 3."""
    torch.manual_seed(2)
    network = nn.Sequential(nn.Flatten(), nn.Linear(9, 3), nn.BatchNorm1d(3)).train()
    features = sharded_features(network, images, (0.5,), (0.25,), batch_size=3)
    assert network.training  # its mode is restored
    return features


def _local(rank: int) -> slice:
    size = GLOBAL_BATCH // WORLD
    return slice(rank * size, (rank + 1) * size)


def _moco_step(model: nn.Module, data: dict, part: slice, gather: bool) -> torch.Tensor:
    teacher = _model(seed=5)  # a momentum encoder: its keys carry no gradient
    with torch.no_grad():
        key1, key2 = teacher(data["view1"][part]), teacher(data["view2"][part])
    query1, query2 = model(data["view1"][part]), model(data["view2"][part])
    return (moco_batch_loss(query1, key2, 0.2, gather=gather)
            + moco_batch_loss(query2, key1, 0.2, gather=gather))


def _barlow_step(model: nn.Module, data: dict, part: slice, reduce: bool) -> torch.Tensor:
    """A Barlow-Twins-like loss on the cross-correlation of the global batch."""
    z1, z2 = model(data["view1"][part]), model(data["view2"][part])
    products = z1.T @ z2  # [4, 4], a sum over the local images
    correlation = (all_reduce_sum_with_gradient(products) if reduce else products) / GLOBAL_BATCH
    return (correlation - torch.eye(4)).square().sum()


def _queue_and_bank(data: dict, parts: list[slice]) -> tuple[FeatureQueue, MemoryBank]:
    queue = FeatureQueue(5, 4, generator=torch.Generator().manual_seed(3))
    for step in range(3):  # 3 x 8 keys into 5 rows: wraps around every step
        for part in parts:
            queue.enqueue_(data["keys"][step][part])
    bank = MemoryBank(20, 4, generator=torch.Generator().manual_seed(4))
    for part in parts:
        bank.update_(data["bank_indices"][part], data["bank_features"][part], momentum=0.5)
    return queue, bank


def _compare(rank: int, world: int, out_dir: str) -> None:  # noqa: ARG001
    data = _data()
    part = _local(rank)
    results = {}
    for name, step in (("moco", lambda m: _moco_step(m, data, part, gather=True)),
                       ("barlow", lambda m: _barlow_step(m, data, part, reduce=True))):
        model = nn.parallel.DistributedDataParallel(_model())
        loss = step(model)
        loss.backward()  # DDP averages the parameter gradients over the processes
        results[name] = {"loss": loss.detach(), "grads": [p.grad.clone() for p in
                                                           model.parameters()]}
    start = sum(CENTER_ROWS[:rank])
    logits = data["teacher_logits"][start: start + CENTER_ROWS[rank]]
    results["center"] = updated_center(data["center"], logits, 0.9)
    results["entropy"] = tuple(teacher_entropy(logits, data["center"], 0.1))
    results["mean"] = all_reduce_mean_no_gradient(torch.tensor([float(rank), 10.0 * rank]))
    queue, bank = _queue_and_bank(data, [part])  # each process enqueues only its own keys
    results["queue"], results["pointer"], results["bank"] = queue.queue, queue.pointer, bank.bank
    results["features"] = _image_features(data["images"])
    torch.save(results, f"{out_dir}/rank{rank}.pt")


def test_two_processes_equal_one_process_on_the_global_batch(tmp_path):
    run_on_processes(_compare, tmp_path, WORLD)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    data = _data()
    everything = slice(0, GLOBAL_BATCH)

    # MoCo v3: the mean of the per-process losses is the global loss, the gradients are equal.
    for name, step in (("moco", lambda m: _moco_step(m, data, everything, gather=False)),
                       ("barlow", lambda m: _barlow_step(m, data, everything, reduce=False))):
        model = _model()
        loss = step(model)
        loss.backward()
        mean_loss = sum(r[name]["loss"] for r in ranks) / WORLD
        torch.testing.assert_close(mean_loss, loss.detach(), rtol=1e-5, atol=1e-6)
        for r in ranks:
            for distributed, single in zip(r[name]["grads"], model.parameters(), strict=True):
                torch.testing.assert_close(distributed, single.grad, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(ranks[0]["moco"]["loss"], ranks[1]["moco"]["loss"])
    # Barlow: every process computes the same global loss (and, with the summed backward, the
    # full gradient rather than 1/world of it).
    torch.testing.assert_close(ranks[0]["barlow"]["loss"], ranks[1]["barlow"]["loss"])

    # DINO's centre over the global batch (unequal local batches) and the monitors.
    expected_center = 0.9 * data["center"] + 0.1 * data["teacher_logits"].mean(dim=0)
    single_entropy = teacher_entropy(data["teacher_logits"], data["center"], 0.1)
    for r in ranks:
        torch.testing.assert_close(r["center"], expected_center)
        torch.testing.assert_close(r["entropy"][0], single_entropy.of_mean)
        torch.testing.assert_close(r["entropy"][1], single_entropy.mean)
        torch.testing.assert_close(r["mean"], torch.tensor([0.5, 5.0]))

    # The queue and the bank: identical on both processes, and equal to one process fed the
    # global batches (keys gathered in rank order).
    queue, bank = _queue_and_bank(data, [everything])
    for r in ranks:
        torch.testing.assert_close(r["queue"], queue.queue)
        assert r["pointer"].item() == queue.pointer.item() == (3 * GLOBAL_BATCH) % 5
        torch.testing.assert_close(r["bank"], bank.bank)
    torch.testing.assert_close(queue.ordered(), torch.nn.functional.normalize(
        data["keys"][2][-5:], dim=1))

    # Features of every image: each process computes a shard, both hold all rows in order,
    # equal to one pass in eval mode (batch norm with its running statistics).
    torch.manual_seed(2)
    network = nn.Sequential(nn.Flatten(), nn.Linear(9, 3), nn.BatchNorm1d(3)).eval()
    with torch.no_grad():
        expected = network((data["images"].float() / 255 - 0.5) / 0.25)
    for r in ranks:
        torch.testing.assert_close(r["features"], expected)
