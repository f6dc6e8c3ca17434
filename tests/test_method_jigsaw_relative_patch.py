"""Jigsaw and relative patch location: on images whose pixels encode their coordinates, the
jigsaw's tile at each position comes from the cell its permutation says (and the inverse
permutation puts the tiles back in cell order), the relative patch's neighbour is the cell its
label names, with a gap to the centre; the heads join tiles in order and give log(P) and
log(8) for uniform logits; the permutation set is a buffer whose minimum Hamming distance is
stored in the run and logged; both train from the command line, and two processes train
the jigsaw as one."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from engine_harness import compare_one_and_two_processes
from fewlabels.augment.permutations import (
    apply_orders,
    inverse_orders,
    minimum_hamming_distance,
    select_permutations,
)
from fewlabels.cli import main
from fewlabels.engine.checkpoint import load_checkpoint
from fewlabels.errors import UserError
from fewlabels.methods import Batch, DataInfo, StepInfo
from fewlabels.methods.jigsaw import Jigsaw, JigsawConfig, TileClassifier
from fewlabels.methods.relative_patch import NEIGHBOUR_CELLS, RelativePatch, RelativePatchConfig
from fewlabels.models import build_backbone

GRAY = DataInfo(channels=1, image_size=28, mean=(0.3,), std=(0.35,), num_images=16)
# Channel 0 of a pixel holds 9 x its row, channel 1 9 x its column (uint8), channel 2 zero;
# with mean 0 and std 1/255 the normalised tiles are these numbers again.
CODED = DataInfo(channels=3, image_size=28, mean=(0.0, 0.0, 0.0),
                 std=(1 / 255, 1 / 255, 1 / 255), num_images=16)


def _coded_images(count: int) -> torch.Tensor:
    steps = torch.arange(28) * 9
    rows = steps.view(28, 1).expand(28, 28)
    columns = steps.view(1, 28).expand(28, 28)
    image = torch.stack((rows, columns, torch.zeros(28, 28, dtype=torch.long)))
    return image.to(torch.uint8).expand(count, 3, 28, 28).contiguous()


def _decode_top_left(tiles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows and columns of the top-left pixels of tiles ``[..., 3, s, s]`` of coded images."""
    return (tiles[..., 0, 0, 0] / 9).round().long(), (tiles[..., 1, 0, 0] / 9).round().long()


def _images(count: int = 8) -> torch.Tensor:
    small = torch.rand(count, 1, 7, 7, generator=torch.Generator().manual_seed(0))
    return (F.interpolate(small, size=28, mode="bilinear") * 255).to(torch.uint8)


def _backbone(channels: int = 1, space_to_depth: int = 2):
    torch.manual_seed(0)
    return build_backbone("convnet", in_channels=channels, image_size=28, width=4, depth=2,
                          feature_dim=8, space_to_depth=space_to_depth)


def _step() -> StepInfo:
    return StepInfo(0, 0, 0.0, torch.Generator().manual_seed(0))


# -- jigsaw --------------------------------------------------------------------------------------


def test_each_puzzle_position_holds_the_tile_of_the_cell_its_permutation_names():
    # A backbone without a stem takes the 7 px tiles unresized, so the pixels stay exact.
    config = JigsawConfig(permutations=10, normalize_tiles=False, channel_jitter=0,
                          grayscale_probability=0.0, tile_input_size=7)
    method = Jigsaw(_backbone(3, space_to_depth=1), config, CODED)
    count = 40
    tiles, labels = method.make_views(Batch(unlabeled=_coded_images(count)),
                                      torch.Generator().manual_seed(1))
    assert tiles.shape == (9 * count, 3, 7, 7) and labels.shape == (count,)
    assert int(labels.min()) >= 0 and int(labels.max()) < 10
    assert len(set(labels.tolist())) > 5  # the permutations are drawn per image
    puzzles = tiles.view(9, count, 3, 7, 7).transpose(0, 1)  # [N, 9 positions, ...]
    rows, columns = _decode_top_left(puzzles)  # [N, 9]
    cells = (rows // 9) * 3 + columns // 9  # the cell each tile was cut from
    orders = method.permutations[labels]  # [N, 9]
    torch.testing.assert_close(cells, orders)  # position t holds tile orders[t]
    # the inverse permutation puts the tiles back in cell order 0..8
    restored = apply_orders(puzzles, inverse_orders(orders))
    restored_rows, restored_columns = _decode_top_left(restored)
    assert bool(((restored_rows // 9) * 3 + restored_columns // 9 == torch.arange(9)).all())


def test_jigsaw_views_for_the_default_convnet_are_normalised_8_px_tiles():
    method = Jigsaw(_backbone(), JigsawConfig(), GRAY)
    assert (method.config.cell_size, method.config.tile_size,
            method.config.tile_input_size) == (9, 7, 8)
    tiles, labels = method.make_views(Batch(unlabeled=_images()), torch.Generator().manual_seed(2))
    assert tiles.shape == (72, 1, 8, 8) and labels.shape == (8,)


def test_colour_puzzles_are_gray_with_the_asked_probability_and_channels_cut_apart():
    method = Jigsaw(_backbone(3), JigsawConfig(permutations=10, grayscale_probability=0.3),
                    CODED)
    count = 200
    images = (torch.rand(count, 3, 28, 28, generator=torch.Generator().manual_seed(9)) * 255)
    tiles, _ = method.make_views(Batch(unlabeled=images.to(torch.uint8)),
                                 torch.Generator().manual_seed(10))
    puzzles = tiles.view(9, count, 3, 8, 8)
    gray = (puzzles[:, :, 0] == puzzles[:, :, 1]).all(dim=(2, 3)).all(dim=0)  # [N]
    assert 0.2 < float(gray.float().mean()) < 0.4  # whole puzzles, p = 0.3
    # normalised per tile: zero mean and unit deviation before the 7 -> 8 px resize
    assert abs(float(puzzles.mean())) < 0.05


def test_the_permutation_set_is_a_buffer_and_its_minimum_distance_is_stored_and_logged():
    method = Jigsaw(_backbone(), JigsawConfig(permutations=64, permutation_seed=5), GRAY)
    buffer = method.permutations
    assert "permutations" in method.state_dict() and buffer.shape == (64, 9)
    torch.testing.assert_close(buffer, torch.from_numpy(select_permutations(64, seed=5)))
    assert method.config.min_hamming_distance == minimum_hamming_distance(buffer.numpy()) == 7
    assert method.config_dict()["min_hamming_distance"] == 7
    inputs = method.make_views(Batch(unlabeled=_images()), torch.Generator().manual_seed(3))
    assert float(method(inputs, _step())["permutation_min_hamming"]) == 7.0
    with pytest.raises(UserError, match="minimum Hamming distance of 7"):
        Jigsaw(_backbone(), JigsawConfig(permutations=64, permutation_seed=5,
                                         min_hamming_distance=8), GRAY)


def test_a_loaded_run_keeps_its_own_permutation_set():
    trained = Jigsaw(_backbone(), JigsawConfig(permutations=24, permutation_seed=0), GRAY)
    rebuilt = Jigsaw(_backbone(), JigsawConfig(permutations=24, permutation_seed=1), GRAY)
    assert not torch.equal(trained.permutations, rebuilt.permutations)
    rebuilt.load_state_dict(trained.state_dict(), strict=True)
    torch.testing.assert_close(rebuilt.permutations, trained.permutations, rtol=0, atol=0)


def test_uniform_logits_give_log_of_the_number_of_permutations():
    method = Jigsaw(_backbone(), JigsawConfig(permutations=24), GRAY).train()
    inputs = method.make_views(Batch(unlabeled=_images()), torch.Generator().manual_seed(4))
    last = method.head.classifier[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.zero_()
    out = method(inputs, _step())
    torch.testing.assert_close(out["loss"], torch.tensor(math.log(24)))
    assert 0.0 <= float(out["pretext_accuracy"]) <= 1.0


def test_the_head_joins_each_images_tiles_side_by_side_in_puzzle_order():
    head = TileClassifier(feature_dim=2, tiles=3, tile_dim=2, hidden_dim=4, classes=5).eval()
    with torch.no_grad():  # per-tile layer = identity (BN at its initial statistics ~ identity)
        head.per_tile[0].weight.copy_(torch.eye(2))
        head.per_tile[0].bias.zero_()
    seen = {}
    head.classifier[0].register_forward_hook(lambda module, args, out: seen.update(x=args[0]))
    # tile-major rows: tile t of image i is row t * 2 + i, holding (10 t + i, 1)
    features = torch.tensor([[10.0 * t + i, 1.0] for t in range(3) for i in range(2)])
    head(features)
    expected = torch.tensor([[10.0 * t + i, 1.0] for i in range(2) for t in range(3)]).view(2, 6)
    torch.testing.assert_close(seen["x"], expected / math.sqrt(1 + 1e-5))


def test_bad_jigsaw_options_are_user_errors():
    with pytest.raises(UserError, match="between 2 and"):
        Jigsaw(_backbone(), JigsawConfig(permutations=400000), GRAY)
    with pytest.raises(UserError, match="inside its"):
        Jigsaw(_backbone(), JigsawConfig(cell_size=9, tile_size=10), GRAY)
    with pytest.raises(UserError, match="does not fit"):
        Jigsaw(_backbone(), JigsawConfig(cell_size=10), GRAY)
    with pytest.raises(UserError, match="cannot take 7 px"):
        Jigsaw(_backbone(), JigsawConfig(tile_input_size=7), GRAY)


# -- relative patch location ---------------------------------------------------------------------


def test_the_neighbour_is_the_cell_its_label_names_and_a_gap_separates_it_from_the_centre():
    config = RelativePatchConfig(patch_size=6, patch_input_size=6, color_dropping=False)
    method = RelativePatch(_backbone(3, space_to_depth=1), config, CODED)
    count = 200
    patches, labels = method.make_views(Batch(unlabeled=_coded_images(count)),
                                        torch.Generator().manual_seed(5))
    assert patches.shape == (2 * count, 3, 6, 6)
    assert set(labels.tolist()) == set(range(8))
    rows, columns = _decode_top_left(patches.view(2, count, 3, 6, 6))  # [2, N]
    cells = (rows // 9) * 3 + columns // 9
    assert bool((cells[0] == 4).all())  # the centre first
    torch.testing.assert_close(cells[1], torch.tensor(NEIGHBOUR_CELLS)[labels])
    # label 0 is up-left of the centre and 7 down-right; patches never touch (gap >= 1 px)
    up_left, down_right = labels == 0, labels == 7
    assert bool((rows[1][up_left] + 6 < rows[0][up_left]).all())
    assert bool((columns[1][up_left] + 6 < columns[0][up_left]).all())
    assert bool((rows[0][down_right] + 6 < rows[1][down_right]).all())
    gaps = torch.where(labels == 3, columns[0] - (columns[1] + 6), torch.tensor(99))
    assert int(gaps.min()) >= 1 and int(gaps[labels == 3].max()) == 5  # jitter: 1 to 5 px


def test_uniform_logits_give_log_8_for_relative_patch():
    method = RelativePatch(_backbone(), RelativePatchConfig(), GRAY).train()
    assert (method.config.cell_size, method.config.patch_size,
            method.config.patch_input_size) == (9, 6, 8)
    inputs = method.make_views(Batch(unlabeled=_images()), torch.Generator().manual_seed(6))
    assert inputs[0].shape == (16, 1, 8, 8)
    last = method.head.classifier[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.zero_()
    torch.testing.assert_close(method(inputs, _step())["loss"], torch.tensor(math.log(8)))


def test_colour_dropping_keeps_one_channel_of_each_colour_patch():
    method = RelativePatch(_backbone(3), RelativePatchConfig(), CODED)
    images = (torch.rand(16, 3, 28, 28, generator=torch.Generator().manual_seed(7)) * 200 + 50)
    patches, _ = method.make_views(Batch(unlabeled=images.to(torch.uint8)),
                                   torch.Generator().manual_seed(8))
    # kept channels are ~50-250 / (1/255) in size after normalisation; dropped ones ~0.01
    large = patches.abs().amax(dim=(2, 3)) > 1.0  # [2N, 3]
    assert bool((large.sum(dim=1) == 1).all())


def test_bad_relative_patch_options_are_user_errors():
    with pytest.raises(UserError, match="inside its"):
        RelativePatch(_backbone(), RelativePatchConfig(jitter=2), GRAY)
    with pytest.raises(UserError, match="--jitter"):
        RelativePatch(_backbone(), RelativePatchConfig(jitter=-1), GRAY)


# -- from the command line -----------------------------------------------------------------------

TINY = ["--data", "fashion-mnist-sample", "--max-images", "64", "--batch-size", "32",
        "--width", "4", "--depth", "2", "--feature-dim", "8", "--no-progress"]


@pytest.mark.parametrize(("name", "options", "logged"), [
    ("jigsaw", ["--permutations", "64"], ("pretext_accuracy", "permutation_min_hamming")),
    ("relative-patch", [], ("pretext_accuracy",)),
])
def test_pretrain_from_the_command_line(tmp_path, name, options, logged):
    out = tmp_path / "run"
    assert main(["pretrain", "--method", name, "--out", str(out), *TINY, *options,
                 "--epochs", "2"]) == 0
    checkpoint = load_checkpoint(out)
    assert checkpoint["finished"] and checkpoint["run"]["representation"] == "backbone"
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [line for line in lines if "loss" in line]
    assert steps and all(key in steps[-1] for key in (*logged, "embedding_spread"))
    if name == "jigsaw":
        assert checkpoint["run"]["method_config"]["min_hamming_distance"] == 7
        assert steps[-1]["permutation_min_hamming"] == 7
        stored = json.loads((out / "run.json").read_text())["run"]["method_config"]
        assert stored["min_hamming_distance"] == 7


# -- two processes against one ------------------------------------------------------------------


@pytest.mark.slow
def test_two_processes_equal_one(tmp_path):
    # Tile-major views split by device like any other views, batch norm in the backbone and
    # in the head over the global batch; relative patch location shares the head and layout.
    compare_one_and_two_processes(tmp_path, "jigsaw", {"permutations": 24, "tile_dim": 8,
                                                       "hidden_dim": 16},
                                  {"name": "convnet", "width": 4, "depth": 2, "feature_dim": 8},
                                  steps=3, batch_size=16)
