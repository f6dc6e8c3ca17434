"""Barlow Twins and VICReg through the engine: the papers' views, the loss on the projections
of both views, options checked, both train from the command line, and two processes equal
one; a non-autograd all-reduce (lightly-ai/lightly#1977) would not."""

import json

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import engine_harness
import gloo_processes
from engine_harness import compare_one_and_two_processes, train_steps
from fewlabels.cli import main
from fewlabels.data.imageset import ImageSet
from fewlabels.engine.checkpoint import load_checkpoint
from fewlabels.errors import UserError
from fewlabels.losses import barlow_twins_loss, vicreg_loss
from fewlabels.methods import Batch, StepInfo
from fewlabels.runs import backbone_spec, build_method, data_info, method_config

HEADS = {"projection_hidden_dim": 16, "projection_dim": 8, "projection_layers": 3}
CONVNET = {"name": "convnet", "width": 4, "depth": 2, "feature_dim": 16}
METHOD_NAMES = ["barlow-twins", "vicreg"]


def _images(count: int = 16) -> torch.Tensor:
    generator = torch.Generator().manual_seed(3)
    small = torch.rand(count, 1, 7, 7, generator=generator)
    return (nn.functional.interpolate(small, size=28, mode="bilinear") * 255).to(torch.uint8)


def _method(name: str, **options):
    info = data_info(ImageSet(_images(), None, [], "test"))
    spec = {"method": name, "method_config": method_config(name, HEADS | options),
            "backbone": backbone_spec("convnet", 4, 2, feature_dim=8),
            "data": {"spec": "test", "info": info.__dict__ | {"mean": list(info.mean),
                                                               "std": list(info.std)}}}
    torch.manual_seed(0)
    return build_method(spec).train()


def _step() -> StepInfo:
    return StepInfo(0, 0, 0.0, torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_views_are_the_papers_asymmetric_pair_and_the_backbone_is_evaluated(name):
    method = _method(name)
    assert method.views.global_blur == (1.0, 0.1)
    assert method.views.global_solarize == (0.0, 0.2)
    assert method.views.local_views == 0
    views = method.make_views(Batch(unlabeled=_images()), torch.Generator().manual_seed(1))
    assert views.shape == (32, 1, 20, 20)  # 2 views of 16 images, 20 px
    assert method.config.view_size == 20  # stored resolved
    assert method.default_representation == "backbone"
    assert method.representations() == {"backbone": method.backbone}
    linear_layers = [m for m in method.projection.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linear_layers] == [(8, 16), (16, 16),
                                                                        (16, 8)]


def test_barlow_twins_loss_is_the_scaled_loss_of_the_two_views_projections():
    method = _method("barlow-twins", off_diagonal_weight=0.02, loss_scale=0.5)
    views = method.make_views(Batch(unlabeled=_images()), torch.Generator().manual_seed(1))
    result = method.training_loss(views, _step())
    with torch.no_grad():
        # the batch norms saw the same batch in train mode: the same projections again
        first, second = method.projection(method.backbone(views)).chunk(2)
    expected = 0.5 * barlow_twins_loss(first, second, off_diagonal_weight=0.02)
    torch.testing.assert_close(result["loss"].detach(), expected, rtol=1e-5, atol=1e-6)
    unscaled = result["on_diagonal"] + 0.02 * result["off_diagonal"]
    torch.testing.assert_close(0.5 * unscaled, expected, rtol=1e-5, atol=1e-6)
    assert 0.3 < result["embedding_spread"].item() < 1.5
    result["loss"].backward()
    assert all(p.grad is not None for p in method.parameters())


def test_vicreg_loss_is_the_weighted_loss_of_the_two_views_embeddings():
    method = _method("vicreg", invariance_weight=2.0, variance_weight=3.0,
                     covariance_weight=4.0, variance_target=1.5)
    views = method.make_views(Batch(unlabeled=_images()), torch.Generator().manual_seed(1))
    result = method.training_loss(views, _step())
    with torch.no_grad():
        first, second = method.projection(method.backbone(views)).chunk(2)
    expected = vicreg_loss(first, second, 2.0, 3.0, 4.0, variance_target=1.5)
    torch.testing.assert_close(result["loss"].detach(), expected, rtol=1e-5, atol=1e-6)
    weighted = 2 * result["invariance"] + 3 * result["variance"] + 4 * result["covariance"]
    torch.testing.assert_close(weighted, expected, rtol=1e-5, atol=1e-6)
    assert result["variance"].item() > 0  # a fresh network's embeddings are below 1.5
    with pytest.raises(UserError, match="at least 2 images"):
        method.training_loss(views[:2], _step())  # one image's two views


@pytest.mark.parametrize(("name", "options", "message"), [
    ("barlow-twins", {"projection_dim": 0}, "--projection-dim must be at least 1"),
    ("barlow-twins", {"loss_scale": 0.0}, "--loss-scale"),
    ("vicreg", {"projection_layers": 0}, "--projection-layers must be at least 1"),
    ("vicreg", {"variance_weight": -1.0}, "VICReg weights"),
])
def test_bad_options_are_user_errors(name, options, message):
    with pytest.raises(UserError, match=message):
        _method(name, **options)


TINY = ["--data", "fashion-mnist-sample", "--max-images", "64", "--batch-size", "32",
        "--width", "4", "--depth", "2", "--feature-dim", "8", "--no-progress",
        "--projection-hidden-dim", "16", "--projection-dim", "8"]


@pytest.mark.parametrize(("name", "logged"), [("barlow-twins", ("on_diagonal", "off_diagonal")),
                                              ("vicreg", ("invariance", "variance",
                                                          "covariance"))])
def test_pretrain_from_the_command_line(tmp_path, name, logged):
    out = tmp_path / "run"
    assert main(["pretrain", "--method", name, "--out", str(out), *TINY, "--epochs", "2"]) == 0
    checkpoint = load_checkpoint(out)
    assert checkpoint["finished"] and checkpoint["run"]["method"] == name
    assert checkpoint["run"]["representation"] == "backbone"
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [line for line in lines if "loss" in line]
    assert steps and all(key in steps[-1] for key in (*logged, "embedding_spread"))
    assert all(torch.isfinite(torch.tensor(line["loss"])) for line in steps)


def test_help_shows_each_methods_own_options(capsys):
    with pytest.raises(SystemExit):
        main(["pretrain", "--method", "barlow-twins", "--out", "x", "--help"])
    text = capsys.readouterr().out
    assert "--off-diagonal-weight" in text and "--loss-scale" in text
    assert "--projection-layers" in text and "--variance-weight" not in text
    with pytest.raises(SystemExit):
        main(["pretrain", "--method", "vicreg", "--out", "x", "--help"])
    text = capsys.readouterr().out
    assert "--invariance-weight" in text and "--variance-target" in text
    assert "--off-diagonal-weight" not in text


# -- two processes against one ------------------------------------------------------------------


@pytest.mark.slow
def test_vicreg_two_processes_equal_one(tmp_path):
    compare_one_and_two_processes(tmp_path, "vicreg", HEADS, CONVNET, steps=3, batch_size=16)


class _AllReduceWithoutGradientSum(torch.autograd.Function):
    """What a plain ``dist.all_reduce`` in the forward pass amounts to: the sum in the
    forward, the identity in the backward (lightly-ai/lightly#1977)."""

    @staticmethod
    def forward(ctx, tensor):  # noqa: ANN001, ANN205
        total = tensor.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        return grad


def _all_reduce_without_gradient_sum(tensor: torch.Tensor) -> torch.Tensor:
    return _AllReduceWithoutGradientSum.apply(tensor) if dist.is_initialized() else tensor


def _worker_with_the_bug(rank: int, world: int, port: int, arguments: dict, out: str) -> None:
    import fewlabels.losses.redundancy as redundancy

    redundancy.all_reduce_sum_with_gradient = _all_reduce_without_gradient_sum
    engine_harness._worker(rank, world, port, arguments, out)


@pytest.mark.slow
def test_barlow_twins_two_processes_equal_one_and_a_non_autograd_all_reduce_would_not(
        tmp_path):
    compare_one_and_two_processes(tmp_path / "exact", "barlow-twins", HEADS, CONVNET, steps=3,
                                  batch_size=16)
    # The bug, on one plain SGD step (no warm-up, no weight decay, loss unscaled) so that the
    # update is -lr * gradient: the forward pass (the loss) is right, but the two processes
    # step about as one process would with half the learning rate. (Not exactly: each
    # process also misses the other's share of the gradient through the global means.)
    def arguments(learning_rate: float) -> dict:
        recipe = {"optimizer": "sgd", "warmup_epochs": 0.0, "weight_decay": 0.0,
                  "learning_rate": learning_rate}
        return {"method": "barlow-twins", "options": HEADS | {"loss_scale": 1.0}, "steps": 1,
                "batch_size": 16, "recipe": recipe, "backbone": dict(CONVNET)}

    buggy = tmp_path / "buggy"
    buggy.mkdir()
    mp.spawn(_worker_with_the_bug, args=(2, gloo_processes.free_port(), arguments(0.5),
                                         str(buggy)), nprocs=2, join=True)
    ranks = [torch.load(buggy / f"rank{r}.pt", weights_only=False) for r in range(2)]
    single = train_steps(**arguments(0.5), out=tmp_path / "single")
    half = train_steps(**arguments(0.25), out=tmp_path / "half")
    assert ranks[0]["losses"] == pytest.approx(single["losses"], rel=1e-5)

    def distance(first: dict, second: dict) -> float:
        return sum((first[name] - value).square().sum().item()
                   for name, value in second.items() if value.is_floating_point()) ** 0.5

    assert distance(ranks[0]["state"], single["state"]) > 0.5  # the comparison fails
    assert distance(ranks[0]["state"], half["state"]) < 0.25 * distance(single["state"],
                                                                        half["state"])
