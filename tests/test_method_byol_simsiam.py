"""BYOL and SimSiam: the target's moving average follows the scheduled momentum exactly, the
target gets no gradient and runs in train mode with its own batch statistics, the stop-gradient
holds, SimSiam's predictor keeps its peak learning rate, two processes equal one, and resuming
a BYOL run gives the weights of an uninterrupted one."""

import math

import pytest
import torch
from torch import nn

from engine_harness import compare_one_and_two_processes
from fewlabels.cli import main
from fewlabels.data.imageset import ImageSet
from fewlabels.engine.checkpoint import load_checkpoint
from fewlabels.engine.optim import parameter_groups
from fewlabels.losses.distillation import simsiam_loss
from fewlabels.methods import Batch, StepInfo
from fewlabels.methods.byol import BYOL
from fewlabels.runs import backbone_spec, build_method, data_info, load_pretrained, method_config

DATA = ["--data", "fashion-mnist-sample", "--max-images", "192", "--batch-size", "32"]
TINY = ["--width", "4", "--depth", "2", "--feature-dim", "8", "--no-progress"]
BYOL_HEADS = ["--projection-hidden-dim", "16", "--projection-dim", "8",
              "--prediction-hidden-dim", "16"]
SIMSIAM_HEADS = ["--projection-hidden-dim", "16", "--projection-dim", "16",
                 "--prediction-hidden-dim", "4"]
SMALL_OPTIONS = {
    "byol": {"projection_hidden_dim": 16, "projection_dim": 8, "prediction_hidden_dim": 16},
    "simsiam": {"projection_hidden_dim": 16, "projection_dim": 16, "prediction_hidden_dim": 4},
}
CONVNET = {"name": "convnet", "width": 4, "depth": 2, "feature_dim": 16}


def _images(count: int = 16) -> torch.Tensor:
    generator = torch.Generator().manual_seed(3)
    small = torch.rand(count, 1, 7, 7, generator=generator)
    return (nn.functional.interpolate(small, size=28, mode="bilinear") * 255).to(torch.uint8)


def _method(name: str, **options):
    info = data_info(ImageSet(_images(), None, [], "test"))
    spec = {"method": name, "method_config": method_config(name, SMALL_OPTIONS[name] | options),
            "backbone": backbone_spec("convnet", 4, 2, feature_dim=8),
            "data": {"spec": "test", "info": info.__dict__ | {"mean": list(info.mean),
                                                               "std": list(info.std)}}}
    torch.manual_seed(0)
    return build_method(spec).train()


def _step(momentum: float = 0.99) -> StepInfo:
    return StepInfo(0, 0, 0.0, torch.Generator().manual_seed(0),
                    values={"teacher_momentum": momentum})


def _views(method) -> torch.Tensor:
    return method.make_views(Batch(unlabeled=_images()), torch.Generator().manual_seed(1))


def _batch_norms(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


# -- BYOL ------------------------------------------------------------------------------------


def test_byol_views_are_the_papers_asymmetric_pair_at_three_quarters_of_the_side():
    method = _method("byol")
    assert method.views.global_blur == (1.0, 0.1)
    assert method.views.global_solarize == (0.0, 0.2)
    assert method.views.local_views == 0
    assert _views(method).shape == (32, 1, 20, 20)  # 2 views of 16 images, 20 px
    assert method.config.view_size == 20  # stored resolved
    assert method.default_representation == "backbone"
    representations = method.representations()
    assert representations["backbone"] is method.backbone
    assert representations["target"] is method.target_backbone


def test_byol_target_gets_no_gradient_and_normalises_with_its_own_batch_statistics():
    method = _method("byol")
    seen = []
    for norm in _batch_norms(method.target_backbone) + _batch_norms(method.target_projection):
        norm.register_forward_pre_hook(
            lambda module, _: seen.append((module.training, torch.is_grad_enabled())))
    target_stats = [b.clone() for b in method.target_backbone.buffers()]
    online_stats = [b.clone() for b in method.backbone.buffers()]
    losses = method(_views(method), _step())
    losses["loss"].backward()
    # inside the target's forward: train mode (batch statistics) and no graph
    assert seen and all(training and not grad for training, grad in seen)
    assert method.eval_mode_modules() == []
    for name, parameter in method.named_parameters():
        if name.startswith("target_"):
            assert not parameter.requires_grad and parameter.grad is None, name
        else:
            assert parameter.grad is not None, name
    # the target's forward pass moved its own running statistics as the online one's did
    after = list(method.target_backbone.buffers())
    assert any(not torch.equal(a, b) for a, b in zip(target_stats, after, strict=True))
    for target, online, online_before in zip(after, method.backbone.buffers(), online_stats,
                                             strict=True):
        if target.is_floating_point():  # same start, same inputs: the same statistics
            assert not torch.equal(online, online_before)
            torch.testing.assert_close(target, online)
    assert 0 < float(losses["embedding_spread"]) <= 1.5
    assert 0 <= float(losses["loss"].detach()) <= 8  # two terms of 2 - 2 cos


def test_byol_loss_is_the_symmetric_regression_of_predictions_on_the_other_views_target():
    method = _method("byol")
    views = _views(method)
    loss = float(method(views, _step())["loss"].detach())
    with torch.no_grad():
        online = method.prediction(method.projection(method.backbone(views)))
        target = method.target_projection(method.target_backbone(views))
    p1, p2 = online.chunk(2)
    t1, t2 = target.chunk(2)
    cos = nn.functional.cosine_similarity
    expected = float((2 - 2 * cos(p1, t2)).mean() + (2 - 2 * cos(p2, t1)).mean())
    assert loss == pytest.approx(expected, rel=1e-5)


def test_byol_through_the_engine_target_is_the_ema_with_the_scheduled_momentum(tmp_path,
                                                                                 monkeypatch):
    """12 steps through the CLI: every update is exactly ``m t + (1 - m) o`` on parameters,
    leaves the target's buffers alone, and ``m`` is the cosine from 0.9 at step 0 to 1 at the
    last step; the target runs in train mode without grad inside the engine's forward."""
    records, modes = [], []
    original_update, original_loss = BYOL.after_optimizer_step, BYOL.training_loss

    def recording_update(self, step):
        before = {k: v.detach().clone() for k, v in self.state_dict().items()}
        original_update(self, step)
        after = {k: v.detach().clone() for k, v in self.state_dict().items()}
        parameters = {name for name, _ in self.named_parameters()}
        records.append((step.step, step.value("teacher_momentum"), before, after, parameters))

    def checking_loss(self, inputs, step):
        if not getattr(self, "_hooked", False):
            self._hooked = True
            for norm in _batch_norms(self.target_backbone):
                norm.register_forward_pre_hook(
                    lambda m, _: modes.append((m.training, torch.is_grad_enabled())))
        return original_loss(self, inputs, step)

    monkeypatch.setattr(BYOL, "after_optimizer_step", recording_update)
    monkeypatch.setattr(BYOL, "training_loss", checking_loss)
    assert main(["pretrain", "--method", "byol", "--out", str(tmp_path / "run"), *DATA, *TINY,
                 *BYOL_HEADS, "--epochs", "2", "--base-momentum", "0.9"]) == 0
    assert [r[0] for r in records] == list(range(12))
    momenta = [r[1] for r in records]
    assert momenta[0] == 0.9 and momenta[-1] == 1.0
    assert all(b > a for a, b in zip(momenta, momenta[1:], strict=False))
    for step, momentum in enumerate(momenta):  # the cosine over steps 0..11
        assert momentum == pytest.approx(1 - 0.05 * (1 + math.cos(math.pi * step / 11)))
    assert modes and all(training and not grad for training, grad in modes)
    for _, momentum, before, after, parameters in records:
        for name in before:
            if not name.startswith("target_"):
                continue
            online = name.replace("target_", "", 1)
            if name in parameters:
                expected = momentum * before[name] + (1 - momentum) * before[online]
                torch.testing.assert_close(after[name], expected, rtol=1e-6, atol=1e-7)
            else:  # running statistics: the target's own, untouched by the update
                assert torch.equal(after[name], before[name]), name
    # the update moved the target: it is neither its start nor the online network
    final, first = records[-1][3], records[0][2]
    name = "target_projection.layers.0.weight"
    assert not torch.equal(final[name], first[name])
    assert not torch.equal(final[name], final["projection.layers.0.weight"])


def test_byol_resume_gives_the_same_weights_target_included(tmp_path):
    def pretrain(out, *extra):
        return main(["pretrain", "--method", "byol", "--out", str(out), *DATA, *TINY,
                     *BYOL_HEADS, "--epochs", "2", *extra])

    assert pretrain(tmp_path / "whole") == 0
    assert pretrain(tmp_path / "split", "--stop-after-steps", "5") == 130
    assert load_checkpoint(tmp_path / "split")["step"] == 5
    assert main(["pretrain", "--out", str(tmp_path / "split"), "--resume", "--no-progress"]) == 0
    whole, resumed = load_checkpoint(tmp_path / "whole"), load_checkpoint(tmp_path / "split")
    assert resumed["step"] == whole["step"] == 12
    assert any(name.startswith("target_backbone.") for name in whole["model"])
    for name, value in whole["model"].items():
        assert torch.equal(value, resumed["model"][name]), name
    for state_whole, state_resumed in zip(whole["optimizer"]["state"].values(),
                                          resumed["optimizer"]["state"].values(), strict=True):
        assert torch.equal(state_whole["momentum_buffer"], state_resumed["momentum_buffer"])
    # the run evaluates the online backbone; the target's is there too
    assert whole["run"]["representation"] == "backbone"
    assert load_pretrained(tmp_path / "whole").representation == "backbone"
    target = load_pretrained(tmp_path / "whole", "target").network
    assert torch.equal(target.state_dict()["stages.0.weight"],
                       whole["model"]["target_backbone.stages.0.weight"])


# -- SimSiam ---------------------------------------------------------------------------------


def test_simsiam_projection_gets_gradient_only_through_the_predictor():
    """The stop-gradient: the loss's gradient at the projections equals what flows back
    through the predictor alone, with both projections as constant targets."""
    method = _method("simsiam")
    captured = {}

    def keep(module, inputs, output):
        output.retain_grad()
        captured["z"] = output

    method.projection.register_forward_hook(keep)
    method(_views(method), _step())["loss"].backward()
    projections = captured["z"]
    leaf = projections.detach().clone().requires_grad_(True)
    predictions = method.prediction(leaf)
    z1, z2 = leaf.chunk(2)
    p1, p2 = predictions.chunk(2)
    reference = 0.5 * simsiam_loss(p1, z2.detach()) + 0.5 * simsiam_loss(p2, z1.detach())
    (expected,) = torch.autograd.grad(reference, leaf)
    assert expected.abs().max() > 0
    torch.testing.assert_close(projections.grad, expected, rtol=1e-5, atol=1e-8)


def test_simsiam_with_a_constant_predictor_gives_the_encoder_no_gradient():
    """If the predictor ignores its input, nothing reaches the backbone: the target side
    contributes no gradient of its own."""

    class Constant(nn.Module):
        def __init__(self, dim: int) -> None:
            super().__init__()
            self.value = nn.Parameter(torch.randn(dim))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.value.expand(x.shape[0], -1)

    method = _method("simsiam")
    method.prediction = Constant(method.config.projection_dim)
    method(_views(method), _step())["loss"].backward()
    assert method.prediction.value.grad.abs().max() > 0
    for name, parameter in [*method.backbone.named_parameters(),
                            *method.projection.named_parameters()]:
        assert parameter.grad is None or not parameter.grad.any(), name


def test_simsiam_projector_is_the_cifar_variant_and_the_loss_is_in_range():
    method = _method("simsiam")
    linears = [m for m in method.projection.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 2
    last = method.projection.layers[-1]
    assert isinstance(last, nn.BatchNorm1d) and not last.affine
    predictor = [m for m in method.prediction.modules() if isinstance(m, nn.Linear)]
    assert [m.out_features for m in predictor] == [4, 16]  # the bottleneck
    losses = method(_views(method), _step())
    assert -1 <= float(losses["loss"].detach()) <= 1
    assert 0 < float(losses["embedding_spread"]) <= 1.5


def test_simsiam_parameter_options_fix_the_predictor_learning_rate_only():
    method = _method("simsiam")
    groups = parameter_groups(method, 5e-4, method.parameter_options)
    fixed = {id(p) for g in groups if not g["scheduled"] for p in g["params"]}
    assert fixed == {id(p) for p in method.prediction.parameters()}
    # weight decay still follows the base class: none on biases and batch norm
    decayed = {id(p) for g in groups if g["decayed"] for p in g["params"]}
    assert id(method.prediction.layers[0].weight) in decayed
    assert id(method.prediction.layers[1].weight) not in decayed
    unfixed = _method("simsiam", fixed_prediction_learning_rate=False)
    assert all(g["scheduled"] for g in parameter_groups(unfixed, 5e-4,
                                                        unfixed.parameter_options))


def test_simsiam_predictor_keeps_its_peak_learning_rate_through_the_engine(tmp_path):
    out = tmp_path / "run"
    assert main(["pretrain", "--method", "simsiam", "--out", str(out), *DATA, *TINY,
                 *SIMSIAM_HEADS, "--epochs", "2"]) == 0
    checkpoint = load_checkpoint(out)
    assert checkpoint["finished"] and checkpoint["step"] == 12
    peak = 0.06 * 32 / 256  # the recipe's rate for a batch of 32
    groups = checkpoint["optimizer"]["param_groups"]
    fixed = [g for g in groups if not g["scheduled"]]
    assert fixed and all(g["lr"] == pytest.approx(peak) for g in fixed)
    assert all(g["lr"] < 0.01 * peak for g in groups if g["scheduled"])  # decayed to the end
    # the fixed groups hold the predictor's tensors, nothing else
    state = checkpoint["optimizer"]["state"]
    shapes = sorted(tuple(state[i]["momentum_buffer"].shape) for g in fixed for i in g["params"])
    method = build_method(checkpoint["run"])
    assert shapes == sorted(tuple(p.shape) for p in method.prediction.parameters())


# -- both ------------------------------------------------------------------------------------


def test_help_lists_each_methods_own_options(capsys):
    with pytest.raises(SystemExit):
        main(["pretrain", "--method", "byol", "--out", "x", "--help"])
    text = capsys.readouterr().out
    for flag in ("--base-momentum", "--final-momentum", "--prediction-hidden-dim",
                 "--blur-probabilities FLOAT,FLOAT", "--solarize-probabilities", "--view-size"):
        assert flag in text, flag
    assert "--temperature" not in text and "--jitter-strength" not in text  # SimCLR's
    with pytest.raises(SystemExit):
        main(["pretrain", "--method", "simsiam", "--out", "x", "--help"])
    text = capsys.readouterr().out
    assert "--fixed-prediction-learning-rate true|false" in text
    assert "--prediction-hidden-dim" in text and "--jitter-strength" in text
    assert "--base-momentum" not in text and "--temperature" not in text


def test_byol_refuses_a_momentum_schedule_that_falls(tmp_path, capsys):
    assert main(["pretrain", "--method", "byol", "--out", str(tmp_path / "run"), *DATA, *TINY,
                 "--epochs", "1", "--base-momentum", "0.999", "--final-momentum", "0.9"]) == 2
    assert "--base-momentum and --final-momentum" in capsys.readouterr().err


@pytest.mark.slow
def test_byol_two_processes_equal_one(tmp_path):
    # a low base momentum so the target moves visibly in 3 steps
    compare_one_and_two_processes(tmp_path, "byol", SMALL_OPTIONS["byol"] | {
        "base_momentum": 0.5}, CONVNET)


@pytest.mark.slow
def test_simsiam_two_processes_equal_one(tmp_path):
    compare_one_and_two_processes(tmp_path, "simsiam", SMALL_OPTIONS["simsiam"], CONVNET)
