"""Tests for fewlabels.models: backbones, heads and momentum helpers (small nets, CPU, fast)."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from fewlabels.errors import UserError
from fewlabels.models import (
    BACKBONES,
    PredictionHead,
    ProjectionHead,
    PrototypeHead,
    build_backbone,
    copy_as_teacher,
    cosine_momentum,
    ema_update_,
)

# Small versions of every backbone, so that running them is cheap.
SMALL = {
    "convnet": {"width": 8, "depth": 2},
    "resnet": {"width": 8, "depth": 1},
    "resnet18": {"width": 8},
    "resnet50": {"width": 4},
    "wide-resnet": {"width": 1, "depth": 10},
    "vit": {"width": 32, "depth": 2, "heads": 2},
}
FAST = ["convnet", "resnet", "wide-resnet", "vit"]  # the big ones share their blocks


def small(name: str, in_channels: int = 3, image_size: int = 32, **options) -> nn.Module:
    torch.manual_seed(0)
    kwargs = {**SMALL[name], **options}
    return build_backbone(name, in_channels=in_channels, image_size=image_size, **kwargs)


def test_every_registered_backbone_is_tested_and_summarised():
    assert set(BACKBONES.names()) == set(SMALL)
    assert all(BACKBONES.summary(name) for name in BACKBONES.names())


@pytest.mark.parametrize("name", sorted(SMALL))
@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("image_size", [28, 32])
def test_output_shape_is_batch_by_feature_dim(name, in_channels, image_size):
    model = small(name, in_channels, image_size)
    x = torch.randn(2, in_channels, image_size, image_size)
    features = model(x)
    assert features.shape == (2, model.feature_dim)
    if in_channels == 1 and image_size == 28 and name in FAST:  # gradients reach the first layer
        features.square().mean().backward()
        first = next(model.parameters())
        assert first.grad is not None and first.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("name", "kwargs", "feature_dim"),
    [
        ("convnet", {}, 512),
        ("convnet", {"feature_dim": 0}, 128),
        ("convnet", {"width": 64, "depth": 3, "feature_dim": 0}, 256),
        ("convnet", {"width": 32, "depth": 2, "feature_dim": 96}, 96),
        ("resnet", {}, 64),
        ("resnet18", {}, 512),
        ("resnet50", {}, 2048),
        ("wide-resnet", {}, 128),
        ("wide-resnet", {"width": 4}, 256),
        ("vit", {}, 192),
    ],
)
def test_feature_dim(name, kwargs, feature_dim):
    model = build_backbone(name, in_channels=3, image_size=32, **kwargs)
    assert model.feature_dim == feature_dim


@pytest.mark.parametrize(
    ("name", "train"),
    [(name, train) for name in FAST for train in (False, True)]
    + [
        ("resnet50", False)  # Bottleneck blocks
    ],
)
def test_channels_last_matches_contiguous(name, train):
    model = small(name, in_channels=1, image_size=28).train(train)
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        expected = model(x)
        model = model.to(memory_format=torch.channels_last)
        actual = model(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_parameter_counts_of_the_published_networks():
    # torchvision's ResNet-18 has 11,689,512 parameters: minus the classifier (513,000) and the
    # 7×7 stem (9,408), plus the 3×3 CIFAR stem (1,728) gives 11,168,832.
    assert count_parameters(build_backbone("resnet18", in_channels=3, image_size=32)) == 11_168_832
    # ResNet-50: 25,557,032 - 2,049,000 - 9,408 + 1,728.
    assert count_parameters(build_backbone("resnet50", in_channels=3, image_size=32)) == 23_500_352
    # WRN-28-2: "1.5M" in FixMatch; the exact sum of its layers.
    wrn = build_backbone("wide-resnet", in_channels=3, image_size=32)
    assert count_parameters(wrn) == 1_466_320


def test_zero_init_residual_zeroes_last_bn_of_each_block():
    model = build_backbone("resnet", in_channels=1, image_size=28, width=4, zero_init_residual=True)
    for stage in model.stages:
        for block in stage:
            assert torch.all(block.bn2.weight == 0)


# --- Vision Transformer -----------------------------------------------------------------------


def test_vit_attention_rows_sum_to_one_and_match_the_fast_path():
    model = small("vit").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        features, attentions = model(x, return_attention=True)
        fast = model(x)
        maps = model.attention_maps(x)
    tokens = 1 + (32 // 4) ** 2
    assert len(attentions) == len(maps) == 2
    for attention in attentions:
        assert attention.shape == (2, 2, tokens, tokens)
        torch.testing.assert_close(attention.sum(-1), torch.ones(2, 2, tokens))
    torch.testing.assert_close(features, fast, rtol=1e-4, atol=1e-5)


def test_vit_forward_tokens_shapes_and_keeping_all_tokens():
    model = small("vit").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        full = model.forward_tokens(x)  # [2, 65, 32]
        keep_all = torch.arange(64).expand(2, 64)
        kept = model.forward_tokens(x, keep_indices=keep_all)
        subset = model.forward_tokens(x, keep_indices=torch.randperm(64)[:16].expand(2, 16))
    assert full.shape == (2, 65, 32) and subset.shape == (2, 17, 32)
    torch.testing.assert_close(kept, full)
    torch.testing.assert_close(full[:, 0], model(x))


def test_vit_keep_indices_equal_running_on_the_kept_patches():
    model = small("vit").eval()
    x = torch.randn(2, 3, 32, 32)
    rows, cols = torch.meshgrid(torch.arange(4), torch.arange(4), indexing="ij")
    top_left = (rows * 8 + cols).reshape(1, 16).expand(2, 16)  # 4×4 patches of the 8×8 grid
    permutation = torch.randperm(64)
    with torch.no_grad():
        # Sin-cos positions depend only on a patch's row and column, so the top-left patches
        # alone are exactly the top-left 16×16 pixels.
        kept = model.forward_tokens(x, keep_indices=top_left)
        cropped = model.forward_tokens(x[:, :, :16, :16])
        # Attention is permutation-equivariant: shuffled kept tokens give shuffled outputs.
        full = model.forward_tokens(x)
        shuffled = model.forward_tokens(x, keep_indices=permutation.expand(2, 64))
    torch.testing.assert_close(kept, cropped, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(shuffled[:, 1:], full[:, 1:][:, permutation], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(shuffled[:, 0], full[:, 0], rtol=1e-4, atol=1e-5)


def test_vit_mask_token_hides_the_masked_patches():
    model = small("vit").eval()
    x = torch.randn(1, 3, 32, 32)
    mask = torch.zeros(1, 64, dtype=torch.bool)
    mask[0, 0] = True  # the top-left 4×4 patch
    mask_token = torch.zeros(32)
    changed = x.clone()
    changed[:, :, :4, :4] += 1.0
    with torch.no_grad():
        a = model.forward_tokens(x, mask=mask, mask_token=mask_token)
        b = model.forward_tokens(changed, mask=mask, mask_token=mask_token)
        c = model.forward_tokens(changed)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)


def test_vit_learned_positions_resize_to_other_grids():
    model = small("vit", position_embedding="learned")
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 32)
    odd = small("vit", width=30, heads=3, position_embedding="learned")  # 30 % 4 != 0 is fine
    assert odd(torch.randn(2, 3, 32, 32)).shape == (2, 30)


# --- Heads -------------------------------------------------------------------------------------


def test_projection_and_prediction_heads_output_dims():
    x = torch.randn(4, 16)
    assert ProjectionHead(16, 32, 8)(x).shape == (4, 8)
    three = ProjectionHead(16, 32, 8, num_layers=3, last_batch_norm=True)
    assert three(x).shape == (4, 8)
    assert sum(isinstance(m, nn.Linear) for m in three.modules()) == 3
    assert isinstance(three.layers[-1], nn.BatchNorm1d)
    assert len(ProjectionHead(16, 32, 8, num_layers=1).layers) == 1
    assert PredictionHead(8, 32, 8)(torch.randn(4, 8)).shape == (4, 8)


def test_prototype_head_is_cosine_similarity_to_unit_prototypes():
    head = PrototypeHead(16, 10)
    with torch.no_grad():
        head.prototypes.weight.mul_(3.0)
    head.normalize_()
    norms = head.prototypes.weight.norm(dim=1)
    torch.testing.assert_close(norms, torch.ones(10))
    scores = head(torch.randn(5, 16) * 7)
    assert scores.shape == (5, 10) and scores.abs().max() <= 1 + 1e-6
    dino = PrototypeHead(16, 10, weight_normalized=True)
    with torch.no_grad():
        dino.prototypes.weight.mul_(5.0)
    assert dino(torch.randn(5, 16)).abs().max() <= 1 + 1e-6


# --- Momentum ----------------------------------------------------------------------------------


def test_ema_update_by_hand():
    student = nn.Sequential(nn.Linear(2, 1), nn.BatchNorm1d(1))
    teacher = copy_as_teacher(student)
    assert not any(p.requires_grad for p in teacher.parameters())
    with torch.no_grad():
        teacher[0].weight.copy_(torch.tensor([[1.0, 2.0]]))
        teacher[0].bias.fill_(0.0)
        student[0].weight.copy_(torch.tensor([[3.0, 4.0]]))
        student[0].bias.fill_(10.0)
        student[1].running_mean.fill_(5.0)
    ema_update_(teacher, student, momentum=0.9)
    # 0.9·teacher + 0.1·student
    torch.testing.assert_close(teacher[0].weight, torch.tensor([[1.2, 2.2]]))
    torch.testing.assert_close(teacher[0].bias, torch.tensor([1.0]))
    torch.testing.assert_close(teacher[1].running_mean, torch.tensor([5.0]))  # copied
    assert student[0].weight.requires_grad  # the student is untouched
    torch.testing.assert_close(student[0].weight, torch.tensor([[3.0, 4.0]]))


def test_copy_as_teacher_does_not_share_storage():
    student = nn.Linear(3, 3)
    teacher = copy_as_teacher(student)
    with torch.no_grad():
        student.weight.zero_()
    assert teacher.weight.abs().sum() > 0


def test_cosine_momentum_endpoints():
    assert cosine_momentum(0, 100) == pytest.approx(0.996)
    assert cosine_momentum(50, 100) == pytest.approx(0.998)
    assert cosine_momentum(100, 100) == pytest.approx(1.0)
    assert cosine_momentum(500, 100) == pytest.approx(1.0)
    assert cosine_momentum(0, 10, base=0.99, final=0.999) == pytest.approx(0.99)


# --- Bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kwargs", "message"),
    [
        ("nope", {}, "choose one of"),
        ("convnet", {"width": 0}, "between 1 and"),
        ("convnet", {"depth": 9}, "depth must be between 1 and 5"),
        ("convnet", {"space_to_depth": 3}, "must divide the image size"),
        ("convnet", {"colour": 1}, "unknown option 'colour'"),
        ("convnet", {"feature_dim": -1}, "feature_dim must be between 0 and"),
        ("resnet", {"depth": 0}, "depth must be between"),
        ("resnet18", {"depth": 34}, "fixed depth"),
        ("wide-resnet", {"depth": 27}, "6n + 4"),
        ("vit", {"patch_size": 5}, "must divide the image size"),
        ("vit", {"width": 100, "heads": 3}, "divisible by heads"),
        ("vit", {"position_embedding": "rope"}, "'sincos' or 'learned'"),
        ("vit", {"patch_size": "four"}, "must be an integer"),
    ],
)
def test_bad_options_raise_user_error(name, kwargs, message):
    with pytest.raises(UserError, match=re.escape(message)):
        build_backbone(name, in_channels=1, image_size=28, **kwargs)


def test_string_options_are_converted():
    model = build_backbone("vit", in_channels=1, image_size=28, width=32, patch_size="7", heads="2")
    assert model.patch_size == 7 and model.num_heads == 2


def test_every_backbone_default_size_matches_the_built_network():
    """Run specs store resolve_sizes(); building with those values must give the default net."""
    from fewlabels.models.backbones import DEFAULT_SIZES, resolve_sizes
    from fewlabels.runs import backbone_spec

    assert set(DEFAULT_SIZES) == set(BACKBONES.names())
    for name in ("convnet", "resnet", "wide-resnet", "vit"):
        width, depth = resolve_sizes(name, None, None)
        torch.manual_seed(0)
        default = build_backbone(name, in_channels=1, image_size=28)
        torch.manual_seed(0)
        explicit = build_backbone(name, in_channels=1, image_size=28, width=width, depth=depth)
        assert [p.shape for p in default.parameters()] == [p.shape for p in explicit.parameters()]
    assert backbone_spec("convnet", None, None)["width"] == 32
    assert backbone_spec("convnet", None, None)["options"] == {"space_to_depth": 2,
                                                              "feature_dim": 512}
    assert backbone_spec("vit", None, None, patch_size=None, heads=4)["options"] == {
        "patch_size": 0, "heads": 4, "mlp_ratio": 4.0, "position_embedding": "sincos"}
    # with the image size, the ViT's automatic patch size and heads are stored resolved
    assert backbone_spec("vit", 128, None, 28)["options"] == {
        "patch_size": 4, "heads": 2, "mlp_ratio": 4.0, "position_embedding": "sincos"}
    assert backbone_spec("resnet18", None, None)["depth"] is None
    with pytest.raises(UserError, match="convnet"):
        backbone_spec("no-such-net", None, None)


def test_a_spec_stored_before_an_option_existed_builds_the_network_it_was_trained_with():
    """Specs written before the ConvNet's feature layer existed lack its option; they must
    rebuild the 128-feature network whose weights they hold, while new specs store it."""
    from fewlabels.methods import DataInfo
    from fewlabels.runs import backbone_spec, make_backbone

    data = DataInfo(channels=1, image_size=28, mean=(0.5,), std=(0.25,))
    old = {"name": "convnet", "width": 32, "depth": 3, "options": {}}
    rebuilt = make_backbone(old, data).eval()
    assert rebuilt.feature_dim == 128
    torch.manual_seed(0)
    trained_then = build_backbone("convnet", in_channels=1, image_size=28, feature_dim=0).eval()
    rebuilt.load_state_dict(trained_then.state_dict())  # strict: the same layers and shapes
    images = torch.randn(3, 1, 28, 28)
    torch.testing.assert_close(rebuilt(images), trained_then(images))
    assert make_backbone(backbone_spec("convnet", None, None), data).feature_dim == 512
    assert make_backbone(backbone_spec("convnet", None, None, feature_dim=0), data).feature_dim \
        == 128
