"""`fewlabels reconstruct` end to end on a tiny MAE run: a PNG of the expected size whose
rows are the originals, the masked inputs and the reconstructions; a one-line error (exit 2)
for a run of a method without reconstructions."""

import numpy as np
import pytest
import torch
from PIL import Image

from fewlabels.cli import main
from fewlabels.commands.reconstruct import reconstructing_methods
from fewlabels.data import load_dataset
from fewlabels.report.cluster_grid import GAP, TITLE_HEIGHT
from fewlabels.report.reconstruction_grid import LABEL_WIDTH, reconstruction_pixel_size

TINY = ["--data", "fashion-mnist-sample", "--max-images", "64", "--batch-size", "32",
        "--no-progress", "--epochs", "1"]
TINY_VIT = ["--backbone", "vit", "--width", "32", "--depth", "1"]


@pytest.fixture(scope="module")
def mae_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("reconstruct") / "mae"
    assert main(["pretrain", "--method", "mae", "--out", str(out), *TINY, *TINY_VIT,
                 "--decoder-width", "16", "--decoder-depth", "1"]) == 0
    return out


def test_reconstruct_writes_a_grid_of_the_expected_size(mae_run, tmp_path, capsys):
    path = tmp_path / "grid.png"
    assert main(["reconstruct", "--checkpoint", str(mae_run), "--out", str(path),
                 "--images", "5", "--seed", "3"]) == 0
    assert "5 test images written" in capsys.readouterr().out
    picture = np.asarray(Image.open(path).convert("L"))
    width, height = reconstruction_pixel_size(3, 5, 28)
    assert picture.shape == (height, width)
    # the first row holds the chosen test images, enlarged twice (28 px -> 56 px)
    test = load_dataset("fashion-mnist-sample").test.images
    chosen = torch.randperm(len(test), generator=torch.Generator().manual_seed(3))[:5]
    first = picture[TITLE_HEIGHT:TITLE_HEIGHT + 56, LABEL_WIDTH:LABEL_WIDTH + 56]
    expected = test[chosen[0], 0].repeat_interleave(2, 0).repeat_interleave(2, 1).numpy()
    assert np.abs(first.astype(int) - expected.astype(int)).max() <= 2
    # the masked row: 37 of 49 patches grey (value 128)
    tile = 56 + GAP
    masked = picture[TITLE_HEIGHT + tile:TITLE_HEIGHT + tile + 56, LABEL_WIDTH:LABEL_WIDTH + 56]
    grey_patches = (masked[::8, ::8] == 128).sum()  # one pixel per 8 x 8 enlarged patch
    assert grey_patches >= 37
    # the same seed gives the same picture
    again = tmp_path / "again.png"
    assert main(["reconstruct", "--checkpoint", str(mae_run), "--out", str(again),
                 "--images", "5", "--seed", "3"]) == 0
    assert np.array_equal(np.asarray(Image.open(again)), np.asarray(Image.open(path)))


def test_a_run_without_reconstructions_fails_in_one_line(tmp_path, capsys):
    out = tmp_path / "simclr"
    assert main(["pretrain", "--out", str(out), *TINY, "--width", "4", "--depth", "2",
                 "--projection-hidden-dim", "8", "--projection-dim", "4"]) == 0
    capsys.readouterr()
    assert main(["reconstruct", "--checkpoint", str(out), "--out",
                 str(tmp_path / "x.png")]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "simclr runs make no reconstructions" in error
    assert "mae" in error and "simmim" in error and not (tmp_path / "x.png").exists()
    assert {"mae", "simmim", "beit"} <= set(reconstructing_methods())
    assert "simclr" not in reconstructing_methods()


def test_out_must_be_a_png(mae_run, tmp_path, capsys):
    assert main(["reconstruct", "--checkpoint", str(mae_run), "--out",
                 str(tmp_path / "x.jpg")]) == 2
    assert "should be a .png" in capsys.readouterr().err
