"""`fewlabels attention`: DINO's pictures of a ViT's last-block [CLS] attention."""

import pytest
import torch
from PIL import Image

from fewlabels.cli import main
from fewlabels.commands import command_module, parse
from fewlabels.data import load_dataset
from fewlabels.report.attention import cls_attention, upsample
from fewlabels.runs import load_pretrained

COMMON = ["--data", "fashion-mnist-sample", "--max-images", "192", "--batch-size", "32",
          "--no-progress", "--projection-hidden-dim", "16", "--projection-dim", "8",
          "--epochs", "1"]


@pytest.fixture(scope="module")
def vit_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("attention") / "vit"
    assert main(["pretrain", "--out", str(out), "--backbone", "vit", "--width", "16",
                 "--depth", "1", "--heads", "2", *COMMON]) == 0
    return out


def test_attention_writes_one_readable_png_per_image(vit_run, tmp_path, capsys):
    out = tmp_path / "pictures"
    assert main(["attention", "--checkpoint", str(vit_run), "--out", str(out),
                 "--images", "3"]) == 0
    assert "wrote 3 attention pictures (2 heads, 7x7 patches" in capsys.readouterr().out
    files = sorted(out.iterdir())
    assert [f.name for f in files] == [f"attention_test_{i:04d}.png" for i in range(3)]
    for file in files:
        with Image.open(file) as picture:
            assert picture.format == "PNG"
            picture.load()
            width, height = picture.size
        assert width > 3 * height  # the image, the mean and 2 heads side by side
    assert not [f for f in out.iterdir() if f.name.startswith(".")]  # no temporary left


def test_the_drawn_weights_are_the_cls_rows_of_the_last_block_summing_to_1(vit_run, tmp_path):
    args = parse(["attention", "--checkpoint", str(vit_run), "--out", str(tmp_path),
                  "--images", "4"])
    pictures = command_module("attention").run(args)
    weights = pictures.weights
    assert weights.shape == (4, 2, 7, 7) and pictures.part == "test"
    torch.testing.assert_close(weights.sum(dim=(2, 3)), torch.ones(4, 2), rtol=0, atol=1e-6)
    assert (weights >= 0).all()
    torch.testing.assert_close(weights.mean(dim=1).sum(dim=(1, 2)), torch.ones(4))

    # by hand: the [CLS] query's softmax row of the last block, its patch part renormalised
    pretrained = load_pretrained(vit_run)
    info = pretrained.data
    images = load_dataset("fashion-mnist-sample").test.images[:4]
    batch = (images.float() / 255 - info.mean[0]) / info.std[0]
    with torch.no_grad():
        last = pretrained.network.attention_maps(batch)[-1]  # [4, 2, 50, 50]
    row = last[:, :, 0, 1:]
    assert (row.sum(dim=-1) < 1).all()  # the [CLS] token attends to itself too
    torch.testing.assert_close(weights, (row / row.sum(-1, keepdim=True)).reshape(4, 2, 7, 7))
    torch.testing.assert_close(cls_attention(pretrained.network, batch), weights)


def test_upsampling_keeps_each_patch_a_square_of_its_weight():
    maps = torch.tensor([[[0.1, 0.2], [0.3, 0.4]]])  # [1, 2, 2]
    big = upsample(maps, (8, 8))
    assert big.shape == (1, 8, 8)
    assert torch.equal(big[0, :4, :4], torch.full((4, 4), 0.1))
    assert torch.equal(big[0, 4:, 4:], torch.full((4, 4), 0.4))
    torch.testing.assert_close(big.sum(), maps.sum() * 16)


def test_an_export_of_the_vit_draws_the_same_weights(vit_run, tmp_path):
    exported = tmp_path / "vit.safetensors"
    assert main(["export", "--checkpoint", str(vit_run), "--out", str(exported)]) == 0
    from_run = command_module("attention").run(parse(
        ["attention", "--checkpoint", str(vit_run), "--out", str(tmp_path / "a"),
         "--images", "2"]))
    from_export = command_module("attention").run(parse(
        ["attention", "--checkpoint", str(exported), "--out", str(tmp_path / "b"),
         "--images", "2"]))
    assert torch.equal(from_run.weights, from_export.weights)


def test_a_convnet_run_is_refused_in_one_line(tmp_path, capsys):
    run = tmp_path / "convnet"
    assert main(["pretrain", "--out", str(run), "--width", "4", "--depth", "2",
                 "--max-images", "64", *COMMON[:2], *COMMON[4:]]) == 0
    capsys.readouterr()
    status = main(["attention", "--checkpoint", str(run), "--out", str(tmp_path / "pics")])
    error = capsys.readouterr().err
    assert status == 2
    assert error.count("\n") == 1 and "Traceback" not in error
    assert error.startswith("fewlabels: error: attention maps need a ViT")
    assert "--backbone vit" in error
    assert not (tmp_path / "pics").exists()
