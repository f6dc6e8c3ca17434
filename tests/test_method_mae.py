"""MAE: the loss against hand values (with and without per-patch normalised targets) and
blind to visible patches; the encoder sees only the kept patches; the decoder puts every
token back at its grid position; the recipe is AdamW with the paper's betas; another
backbone is refused with a message naming --backbone vit; reconstructions have the image's
shape."""

import json

import pytest
import torch

from fewlabels.cli import main
from fewlabels.engine.checkpoint import load_checkpoint
from fewlabels.errors import UserError
from fewlabels.losses.masked import mae_loss
from fewlabels.methods import Batch, DataInfo, StepInfo
from fewlabels.methods.mae import MAE, MAEConfig
from fewlabels.models import build_backbone
from fewlabels.models.patches import patchify
from fewlabels.models.vit import sincos_position_embedding_2d

DATA = DataInfo(1, 28, (0.3,), (0.35,), 10, 100)


def tiny_mae(**config) -> MAE:
    torch.manual_seed(0)
    backbone = build_backbone("vit", in_channels=1, image_size=28, width=32, depth=1)
    return MAE(backbone, MAEConfig(decoder_width=16, decoder_depth=1, decoder_heads=2,
                                   **config), DATA)


def test_mae_loss_by_hand():
    patches = torch.tensor([[[1.0, 3.0], [2.0, 2.0]]])  # [N=1, L=2, P=2]
    predictions = torch.tensor([[[0.0, 0.0], [1.0, 1.0]]])
    mask = torch.tensor([[True, False]])
    # masked patch 0 only: ((0 - 1)^2 + (0 - 3)^2) / 2 = 5
    assert mae_loss(predictions, patches, mask).item() == pytest.approx(5.0)
    # normalised: patch [1, 3] has mean 2 and unbiased variance 2, so the target is
    # [-1, 1] / sqrt(2 + eps) and the prediction 0 misses by 1 / (2 + eps) on average
    eps = 1e-6
    normalised = mae_loss(predictions, patches, mask, normalize_targets=True, eps=eps)
    assert normalised.item() == pytest.approx(1 / (2 + eps), rel=1e-6)
    # two masked patches average: patch 1 [2, 2] is flat, target 0, prediction 1: error 1
    both = torch.tensor([[True, True]])
    assert mae_loss(predictions, patches, both).item() == pytest.approx((5 + 1) / 2)
    assert mae_loss(predictions, patches, both, True, eps).item() == pytest.approx(
        (1 / (2 + eps) + 1) / 2, rel=1e-6)


def test_mae_loss_ignores_the_visible_patches():
    generator = torch.Generator().manual_seed(0)
    patches = torch.randn(3, 16, 12, generator=generator)
    predictions = torch.randn(3, 16, 12, generator=generator)
    mask = torch.rand(3, 16, generator=generator) < 0.75
    for normalise in (False, True):
        loss = mae_loss(predictions, patches, mask, normalise)
        changed = torch.where(mask[..., None], predictions, predictions + 10.0)
        assert mae_loss(changed, patches, mask, normalise).item() == pytest.approx(loss.item())
        changed_masked = torch.where(mask[..., None], predictions + 1.0, predictions)
        assert mae_loss(changed_masked, patches, mask, normalise).item() != pytest.approx(
            loss.item())
        # the gradient at visible positions is exactly zero
        predictions.requires_grad_(True)
        mae_loss(predictions, patches, mask, normalise).backward()
        assert (predictions.grad[~mask] == 0).all() and (predictions.grad[mask] != 0).any()
        predictions = predictions.detach()


def test_the_encoder_sees_only_the_kept_patches_and_the_decoder_unshuffles():
    method = tiny_mae(mask_ratio=0.75).train()
    images = torch.randint(0, 256, (5, 1, 28, 28), dtype=torch.uint8)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        inputs = method.make_views(Batch(unlabeled=images), generator)
    views, keep, restore, mask = inputs
    assert views.shape == (5, 1, 28, 28) and keep.shape == (5, 12)  # int(49 * 0.25)
    assert (mask.sum(1) == 37).all()
    seen = {}
    method.backbone.blocks[0].register_forward_pre_hook(
        lambda module, args: seen.__setitem__("encoder", args[0].shape))
    method.decoder.blocks[0].register_forward_pre_hook(
        lambda module, args: seen.__setitem__("decoder", args[0].detach()))
    latent = method.backbone.forward_tokens(views, keep_indices=keep)
    out = method.training_loss(inputs, StepInfo(0, 0, 0.0, generator))
    assert seen["encoder"] == (5, 13, 32)  # CLS + the 12 visible patches
    assert torch.isfinite(out["loss"]) and "embedding_spread" in out
    # decoder input: the encoder token of patch l at position 1 + l, the mask token at the
    # masked positions, each plus the decoder's position embedding of l
    decoder_in = seen["decoder"]  # [5, 50, 16]
    embedded = method.decoder.embed(latent).detach()  # [5, 13, 16]
    positions = sincos_position_embedding_2d(16, 7, 7)
    for n in range(5):
        for k, patch in enumerate(keep[n].tolist()):
            torch.testing.assert_close(decoder_in[n, 1 + patch],
                                       embedded[n, 1 + k] + positions[patch])
        for patch in mask[n].nonzero().flatten().tolist():
            torch.testing.assert_close(decoder_in[n, 1 + patch],
                                       method.decoder.mask_token[0, 0].detach()
                                       + positions[patch])


def test_training_loss_is_the_masked_mse_of_the_decoder_output():
    for normalise in (False, True):
        method = tiny_mae(norm_pixel_loss=normalise, norm_pixel_eps=0.25)
        images = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)
        generator = torch.Generator().manual_seed(1)
        with torch.no_grad():
            views, keep, restore, mask = method.make_views(Batch(unlabeled=images), generator)
            loss = method.training_loss((views, keep, restore, mask),
                                        StepInfo(0, 0, 0.0, generator))["loss"]
            _, predictions = method.predict(views, keep, restore)
        target = patchify(views, 4)
        if normalise:
            target = (target - target.mean(-1, keepdim=True)) / (
                target.var(-1, keepdim=True) + 0.25).sqrt()
        expected = ((predictions - target) ** 2).mean(-1)[mask].mean()
        torch.testing.assert_close(loss, expected)


def test_another_backbone_is_refused_in_one_line():
    convnet = build_backbone("convnet", in_channels=1, image_size=28, width=4, depth=2)
    with pytest.raises(UserError, match="--backbone vit") as error:
        MAE(convnet, MAEConfig(), DATA)
    assert "\n" not in str(error.value)
    with pytest.raises(UserError, match="--mask-ratio"):
        tiny_mae(mask_ratio=1.0)


def test_reconstruct_returns_images_of_the_input_shape():
    for normalise in (False, True):
        method = tiny_mae(norm_pixel_loss=normalise).eval()
        images = torch.randn(3, 1, 28, 28)
        result = method.reconstruct(images, torch.Generator().manual_seed(0))
        assert result["reconstruction"].shape == images.shape
        assert result["mask"].shape == (3, 1, 28, 28) and result["mask"].dtype == torch.bool
        # 37 of 49 patches of 16 pixels masked; masked pixels are 0 in "masked"
        assert (result["mask"].flatten(1).sum(1) == 37 * 16).all()
        assert (result["masked"][result["mask"]] == 0).all()
        assert torch.equal(result["masked"][~result["mask"]], images[~result["mask"]])


def test_pretrain_stores_adamw_with_the_papers_betas(tmp_path):
    out = tmp_path / "run"
    assert main(["pretrain", "--method", "mae", "--backbone", "vit", "--width", "32",
                 "--depth", "1", "--data", "fashion-mnist-sample", "--max-images", "64",
                 "--batch-size", "32", "--epochs", "1", "--no-progress", "--decoder-width",
                 "16", "--decoder-depth", "1", "--out", str(out)]) == 0
    recipe = json.loads((out / "run.json").read_text())["train"]["recipe"]
    assert recipe["optimizer"] == "adamw" and recipe["adamw_betas"] == [0.9, 0.95]
    assert recipe["weight_decay"] == 0.05
    checkpoint = load_checkpoint(out)
    assert checkpoint["run"]["method_config"]["view_size"] == 28  # full-size views
    assert checkpoint["run"]["representation"] == "backbone"  # the encoder's CLS token
