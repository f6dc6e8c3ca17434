"""SimMIM and BEiT-style: the losses against hand values and blind to visible positions;
masked patches reach the encoder only as the mask token; BEiT's tokenizer assigns the
nearest centre, is fitted once from the training images and is saved with the run."""

import math

import pytest
import torch

from engine_harness import compare_one_and_two_processes
from fewlabels.cli import main
from fewlabels.engine.checkpoint import load_checkpoint
from fewlabels.engine.epoch_work import EpochContext
from fewlabels.errors import UserError
from fewlabels.losses.masked import masked_token_loss, simmim_loss
from fewlabels.methods import Batch, DataInfo, StepInfo
from fewlabels.methods.beit import BEiT, BEiTConfig, PatchTokenizer
from fewlabels.methods.simmim import SimMIM, SimMIMConfig
from fewlabels.models import build_backbone
from fewlabels.models.patches import patchify
from fewlabels.runs import build_method

DATA = DataInfo(1, 28, (0.3,), (0.35,), 10, 100)


def tiny_vit():
    torch.manual_seed(0)
    return build_backbone("vit", in_channels=1, image_size=28, width=32, depth=1)


def test_simmim_loss_by_hand_and_blind_to_visible_pixels():
    predictions = torch.tensor([[[1.0, 2.0], [0.0, 0.0]]])  # [N=1, L=2, P=2]
    patches = torch.tensor([[[0.0, 0.0], [5.0, 5.0]]])
    # only patch 0 is masked: (|1 - 0| + |2 - 0|) / 2 masked values = 1.5
    assert simmim_loss(predictions, patches, torch.tensor([[True, False]])).item() == 1.5
    # both: (1 + 2 + 5 + 5) / 4 masked values
    assert simmim_loss(predictions, patches, torch.tensor([[True, True]])).item() == 13 / 4
    changed = predictions.clone()
    changed[0, 1] += 100.0
    assert simmim_loss(changed, patches, torch.tensor([[True, False]])).item() == 1.5


def test_masked_token_loss_by_hand_and_blind_to_visible_positions():
    logits = torch.tensor([[[0.0, 0.0], [5.0, 0.0]]])  # [N=1, L=2, K=2]
    tokens = torch.tensor([[0, 1]])
    # position 0: uniform over 2 words, -log(1/2); position 1 not masked
    loss = masked_token_loss(logits, tokens, torch.tensor([[True, False]]))
    assert loss.item() == pytest.approx(math.log(2))
    both = masked_token_loss(logits, tokens, torch.tensor([[True, True]]))
    assert both.item() == pytest.approx((math.log(2) + math.log(1 + math.exp(5))) / 2)
    changed = logits.clone()
    changed[0, 1] = torch.tensor([-3.0, 7.0])
    assert masked_token_loss(changed, tokens, torch.tensor([[True, False]])).item() == \
        pytest.approx(math.log(2))


def _masked_content_does_not_matter(method, predict):
    """Changing the pixels inside masked patches leaves every output unchanged: they reach
    the encoder only as the mask token."""
    images = torch.randn(3, 1, 28, 28)
    mask = torch.zeros(3, 49, dtype=torch.bool)
    mask[:, ::3] = True
    pixels = mask.view(3, 1, 7, 7).repeat_interleave(4, 2).repeat_interleave(4, 3)
    with torch.no_grad():
        first = predict(images, mask)
        second = predict(torch.where(pixels, torch.randn_like(images), images), mask)
        unmasked = predict(torch.where(pixels, torch.randn_like(images), images),
                           torch.zeros_like(mask))
    torch.testing.assert_close(first, second)
    assert not torch.allclose(first, unmasked)


def test_simmim_masks_with_the_mask_token_and_trains_on_masked_pixels():
    method = SimMIM(tiny_vit(), SimMIMConfig(), DATA).eval()
    _masked_content_does_not_matter(method, lambda x, m: method.predict(x, m)[1])
    images = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        views, mask = method.make_views(Batch(unlabeled=images), generator)
        loss = method.training_loss((views, mask), StepInfo(0, 0, 0.0, generator))["loss"]
        predictions = method.predict(views, mask)[1]
    assert views.shape == (4, 1, 28, 28) and (mask.sum(1) == 29).all()  # round(0.6 * 49)
    expected = (predictions - patchify(views, 4)).abs().mean(-1)[mask].mean()
    torch.testing.assert_close(loss, expected)
    result = method.reconstruct(torch.randn(2, 1, 28, 28), generator)
    assert result["reconstruction"].shape == (2, 1, 28, 28)


def test_the_tokenizer_assigns_the_nearest_centre_in_whitened_space():
    generator = torch.Generator().manual_seed(0)
    # patches with very unequal variances: whitening changes which centre is nearest
    patches = torch.randn(2000, 4, generator=generator) * torch.tensor([10.0, 1.0, 0.5, 0.1])
    tokenizer = PatchTokenizer(4, 16)
    numbers = tokenizer.fit(patches, generator, iterations=20, whitening_floor=1e-6)
    assert numbers["tokenizer_words_in_use"] == 16
    whitened = tokenizer.whiten(patches)
    covariance = torch.cov(whitened.T)
    torch.testing.assert_close(covariance, torch.eye(4), atol=0.02, rtol=0.0)
    tokens = tokenizer(patches)
    distances = (whitened[:, None] - tokenizer.centres[None]).pow(2).sum(-1)  # [M, K]
    assert torch.equal(tokens, distances.argmin(1))
    # decoding a word gives the pixels whose whitened coordinates are its centre
    words = torch.arange(16)
    torch.testing.assert_close(tokenizer.whiten(tokenizer.decode(words)), tokenizer.centres,
                               atol=1e-3, rtol=1e-4)


def _epoch_context(images, seed=0):
    return EpochContext(0, 0, 1, images, (0.3,), (0.35,), torch.Generator().manual_seed(seed),
                        lambda parameters: None)


def test_beit_fits_its_vocabulary_once_and_predicts_masked_tokens():
    method = BEiT(tiny_vit(), BEiTConfig(vocabulary_size=8, tokenizer_patches=2000), DATA)
    images = torch.randint(0, 256, (60, 1, 28, 28), dtype=torch.uint8)
    numbers = method.on_epoch_start(_epoch_context(images))
    assert numbers["tokenizer_words_in_use"] == 8 and bool(method.tokenizer.fitted)
    centres = method.tokenizer.centres.clone()
    assert method.on_epoch_start(_epoch_context(images, seed=1)) is None  # not refitted
    assert torch.equal(method.tokenizer.centres, centres)
    method.eval()
    _masked_content_does_not_matter(
        method, lambda x, m: method.head(method.backbone.forward_tokens(
            x, mask=m, mask_token=method.mask_token)[:, 1:]))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        views, mask, tokens = method.make_views(Batch(unlabeled=images[:6]), generator)
        out = method.training_loss((views, mask, tokens), StepInfo(0, 0, 0.0, generator))
    assert (mask.sum(1) <= 20).all() and mask.sum(1).float().mean() > 17  # BEiT's 40 %
    assert torch.equal(tokens, method.tokenizer(patchify(views, 4).flatten(0, 1)).view(6, 49))
    assert 0 <= out["masked_token_accuracy"] <= 1 and torch.isfinite(out["loss"])
    result = method.reconstruct(views, generator)
    assert result["reconstruction"].shape == views.shape


def test_beit_vocabulary_is_saved_with_the_run(tmp_path):
    out = tmp_path / "run"
    assert main(["pretrain", "--method", "beit", "--backbone", "vit", "--width", "32",
                 "--depth", "1", "--data", "fashion-mnist-sample", "--max-images", "64",
                 "--batch-size", "32", "--epochs", "1", "--no-progress",
                 "--vocabulary-size", "16", "--tokenizer-patches", "1000", "--out",
                 str(out)]) == 0
    checkpoint = load_checkpoint(out)
    assert bool(checkpoint["model"]["tokenizer.fitted"])
    method = build_method(checkpoint["run"])
    method.load_state_dict(checkpoint["model"])
    centres = method.tokenizer.centres.clone()
    assert centres.abs().sum() > 0
    # a resumed run keeps its vocabulary: the epoch hook does not refit
    assert method.on_epoch_start(_epoch_context(torch.zeros(64, 1, 28, 28,
                                                            dtype=torch.uint8))) is None
    assert torch.equal(method.tokenizer.centres, centres)


def test_simmim_and_beit_refuse_other_backbones():
    convnet = build_backbone("convnet", in_channels=1, image_size=28, width=4, depth=2)
    for method, config in ((SimMIM, SimMIMConfig()), (BEiT, BEiTConfig())):
        with pytest.raises(UserError, match="--backbone vit"):
            method(convnet, config, DATA)


@pytest.mark.slow
def test_two_processes_equal_one_with_masks_of_different_sizes(tmp_path):
    """SimMIM's 2 x 2 blocks, shifted and cropped to the 7 x 7 grid, mask different numbers
    of patches on the two devices: the loss is normalised by the global count, so the
    gradients equal one process's (a per-device mean fails this test)."""
    compare_one_and_two_processes(
        tmp_path, "simmim", {"mask_block": 2}, {"name": "vit", "width": 32, "depth": 1},
        steps=3, batch_size=16)
