"""Tiles and the jigsaw permutation set: every permutation is valid and distinct, the set's
minimum Hamming distance is what a brute-force check finds, the greedy choice is seeded;
tiles are cut inside their cells, exactly, never from the gaps, with jitter in bounds;
shuffling by an order and by its inverse restores the tiles; the colour counter-measures
keep or drop what they should."""

import math

import numpy as np
import pytest
import torch

from fewlabels.augment.permutations import (
    _distances_to,
    all_permutations,
    apply_orders,
    hamming_distances,
    inverse_orders,
    mean_hamming_distance,
    minimum_hamming_distance,
    select_permutations,
)
from fewlabels.augment.tiles import (
    cell_origins,
    check_tile_geometry,
    cut_tiles,
    draw_integers,
    drop_channels,
    gray_tiles_where,
    normalize_tiles,
    tile_positions,
)
from fewlabels.errors import UserError

# -- the permutation set -----------------------------------------------------------------------


def _brute_force_minimum(orders: np.ndarray) -> int:
    best = 10**9
    for i in range(len(orders)):
        for j in range(i + 1, len(orders)):
            best = min(best, sum(int(a != b) for a, b in zip(orders[i], orders[j], strict=True)))
    return best


@pytest.mark.parametrize("count", [2, 64, 100])
def test_every_permutation_is_valid_distinct_and_the_minimum_distance_is_brute_forced(count):
    orders = select_permutations(count, 9, seed=0)
    assert orders.shape == (count, 9) and orders.dtype == np.int64
    assert all(sorted(row) == list(range(9)) for row in orders.tolist())
    assert len({tuple(row) for row in orders.tolist()}) == count
    assert minimum_hamming_distance(orders) == _brute_force_minimum(orders)


def test_the_greedy_set_keeps_the_distance_it_reports_and_farthest_pairs_first():
    # Two permutations can differ everywhere: the greedy choice finds such a pair.
    assert minimum_hamming_distance(select_permutations(2)) == 9
    # Measured once (and what the method logs): 64 keep 7 apart, 100 keep 6 apart;
    # random sets of 100 have pairs only 2 apart.
    assert minimum_hamming_distance(select_permutations(64)) == 7
    assert minimum_hamming_distance(select_permutations(100)) == 6
    assert mean_hamming_distance(select_permutations(100)) > 8.0
    rng = np.random.default_rng(0)
    random_set = all_permutations(9)[rng.choice(math.factorial(9), 100, replace=False)]
    assert minimum_hamming_distance(random_set) <= 3


def test_the_greedy_choice_is_deterministic_for_a_seed_and_differs_between_seeds():
    first, again = select_permutations(20, seed=3), select_permutations(20, seed=3)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, select_permutations(20, seed=4))


def test_fast_distances_equal_plain_comparison():
    candidates = all_permutations(9)
    order = np.array([3, 1, 4, 0, 5, 8, 2, 6, 7])
    np.testing.assert_array_equal(_distances_to(9, order), hamming_distances(candidates, order))
    assert len(candidates) == math.factorial(9)


@pytest.mark.parametrize("count", [1, math.factorial(4) + 1])
def test_impossible_set_sizes_are_user_errors(count):
    with pytest.raises(UserError, match="permutations"):
        select_permutations(count, items=4)


def test_shuffling_by_an_order_and_then_its_inverse_restores_the_tiles():
    generator = torch.Generator().manual_seed(0)
    tiles = torch.rand(5, 9, 1, 3, 3, generator=generator)
    orders = torch.from_numpy(select_permutations(5))  # [5, 9], one per image
    shuffled = apply_orders(tiles, orders)
    for image in range(5):  # position t holds tile orders[t]
        for position in range(9):
            torch.testing.assert_close(shuffled[image, position],
                                       tiles[image, orders[image, position]], rtol=0, atol=0)
    torch.testing.assert_close(apply_orders(shuffled, inverse_orders(orders)), tiles,
                               rtol=0, atol=0)


# -- tiles ---------------------------------------------------------------------------------------

SIDE = 28


def _coordinate_image(count: int = 1, channels: int = 1) -> torch.Tensor:
    """Pixel (c, y, x) holds c * SIDE^2 + y * SIDE + x (exact in float32)."""
    values = torch.arange(channels * SIDE * SIDE, dtype=torch.float32)
    return values.view(1, channels, SIDE, SIDE).repeat(count, 1, 1, 1)


def _decode(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    values = values.long()
    return values // (SIDE * SIDE), values % (SIDE * SIDE) // SIDE, values % SIDE


def test_cell_origins_are_a_regular_grid_at_an_offset_inside_the_image():
    origins = cell_origins(200, SIDE, 3, 9, generator=torch.Generator().manual_seed(0))
    offsets = origins[:, 0]  # cell 0
    assert set(offsets.flatten().tolist()) == {0, 1}  # 27 px grid in 28 px: both offsets
    for row in range(3):
        for column in range(3):
            torch.testing.assert_close(origins[:, row * 3 + column],
                                       offsets + torch.tensor([9 * row, 9 * column]))


def test_tiles_are_exact_blocks_inside_their_cells_and_jitter_stays_in_bounds():
    count, cell, tile, jitter = 300, 9, 7, 1
    positions = tile_positions(count, SIDE, 3, cell, tile, jitter,
                               generator=torch.Generator().manual_seed(1))
    origins = cell_origins(count, SIDE, 3, cell, generator=torch.Generator().manual_seed(1))
    moves = positions - origins - (cell - tile) // 2
    assert moves.abs().max() <= jitter
    assert set(moves.flatten().tolist()) == {-1, 0, 1}  # the whole range is used
    tiles = cut_tiles(_coordinate_image(count), positions, tile)  # [N, 9, 1, 7, 7]
    assert tiles.shape == (count, 9, 1, tile, tile)
    _, rows, columns = _decode(tiles[:, :, 0])
    steps = torch.arange(tile)
    # exactly the block at the position: consecutive rows and columns, no interpolation
    torch.testing.assert_close(rows, positions[..., 0, None, None] + steps[:, None]
                               .expand(tile, tile))
    torch.testing.assert_close(columns, positions[..., 1, None, None] + steps[None, :]
                               .expand(tile, tile))
    # inside the cell
    top, left = origins[..., 0, None, None], origins[..., 1, None, None]
    assert bool(((rows >= top) & (rows < top + cell) & (columns >= left)
                 & (columns < left + cell)).all())


def test_gap_pixels_never_appear_in_any_tile():
    # Without jitter a 7 px tile sits 1 px from every side of its 9 px cell: the cells' border
    # rows and columns are the gaps between tiles and must never be cut.
    count = 50
    positions = tile_positions(count, SIDE, 3, 9, 7, 0, generator=torch.Generator().manual_seed(2))
    origins = cell_origins(count, SIDE, 3, 9, generator=torch.Generator().manual_seed(2))
    _, rows, columns = _decode(cut_tiles(_coordinate_image(count), positions, 7)[:, :, 0])
    relative_rows = (rows - origins[:, :1, 0, None, None]) % 9
    relative_columns = (columns - origins[:, :1, 1, None, None]) % 9
    for gap in (0, 8):
        assert not bool((relative_rows == gap).any())
        assert not bool((relative_columns == gap).any())


def test_each_colour_channel_moves_on_its_own_but_stays_in_its_cell():
    count, cell, tile = 200, 9, 7
    positions = tile_positions(count, SIDE, 3, cell, tile, 1, channels=3, channel_jitter=1,
                               generator=torch.Generator().manual_seed(3))
    origins = cell_origins(count, SIDE, 3, cell, generator=torch.Generator().manual_seed(3))
    assert positions.shape == (count, 9, 3, 2)
    tiles = cut_tiles(_coordinate_image(count, 3), positions, tile)  # [N, 9, 3, 7, 7]
    channel, rows, columns = _decode(tiles)
    assert bool((channel == torch.arange(3).view(1, 1, 3, 1, 1)).all())
    top, left = origins[:, :, None, 0, None, None], origins[:, :, None, 1, None, None]
    assert bool(((rows >= top) & (rows < top + cell) & (columns >= left)
                 & (columns < left + cell)).all())
    # some tiles have channels cut at different places (the chromatic counter-measure)
    assert bool((positions[:, :, 0] != positions[:, :, 1]).any())


def test_shuffling_positions_before_cutting_equals_shuffling_the_tiles():
    images = torch.rand(4, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(4))
    positions = tile_positions(4, SIDE, 3, 9, 7, 1, generator=torch.Generator().manual_seed(5))
    orders = torch.from_numpy(select_permutations(4, seed=1))
    torch.testing.assert_close(cut_tiles(images, apply_orders(positions, orders), 7),
                               apply_orders(cut_tiles(images, positions, 7), orders),
                               rtol=0, atol=0)


def test_impossible_geometry_and_positions_outside_are_refused():
    with pytest.raises(ValueError, match="does not fit"):
        check_tile_geometry(28, 3, 10, 7, 1)
    with pytest.raises(ValueError, match="inside its"):
        check_tile_geometry(28, 3, 9, 7, 2)
    with pytest.raises(ValueError, match="leaves the image"):
        cut_tiles(torch.zeros(1, 1, 28, 28), torch.tensor([[[22, 0]]]), 7)


def test_integers_are_drawn_uniformly_over_both_ends():
    values = draw_integers((6000,), -2, 2, torch.Generator().manual_seed(0), torch.device("cpu"))
    counts = torch.bincount(values + 2, minlength=5)
    assert values.min() == -2 and values.max() == 2
    assert bool((counts > 1000).all() & (counts < 1400).all())


def test_tile_normalisation_gives_zero_mean_unit_deviation_and_leaves_blank_tiles_at_zero():
    tiles = torch.rand(2, 9, 3, 7, 7, generator=torch.Generator().manual_seed(6)) * 0.5 + 0.2
    tiles[0, 4] = 0.0  # a blank tile (Fashion-MNIST's background)
    normalised = normalize_tiles(tiles, 0.05)
    assert bool(normalised[0, 4].eq(0).all())
    others = torch.cat((normalised[0, :4], normalised[0, 5:], normalised[1]))
    torch.testing.assert_close(others.mean(dim=(1, 2, 3)), torch.zeros(17), atol=1e-5, rtol=0)
    torch.testing.assert_close(others.std(dim=(1, 2, 3)), torch.ones(17), atol=1e-5, rtol=0)


def test_colour_dropping_keeps_one_channel_exactly_and_replaces_the_others_by_small_noise():
    patches = torch.rand(64, 2, 3, 6, 6, generator=torch.Generator().manual_seed(7)) + 1.0
    dropped = drop_channels(patches, 0.01, generator=torch.Generator().manual_seed(8))
    kept = (dropped == patches).all(dim=(3, 4))  # [64, 2, 3]
    assert bool((kept.sum(dim=2) == 1).all())
    assert float(dropped[~kept].abs().max()) < 0.1
    assert len(set(kept.float().argmax(dim=2).flatten().tolist())) == 3  # any channel is kept
    gray_input = torch.rand(4, 1, 1, 6, 6)
    assert drop_channels(gray_input, 0.01) is gray_input


def test_gray_tiles_only_for_the_selected_images():
    tiles = torch.rand(2, 9, 3, 4, 4, generator=torch.Generator().manual_seed(9))
    gray = gray_tiles_where(tiles, torch.tensor([True, False]))
    expected = 0.299 * tiles[0, :, 0] + 0.587 * tiles[0, :, 1] + 0.114 * tiles[0, :, 2]
    for channel in range(3):
        torch.testing.assert_close(gray[0, :, channel], expected)
    torch.testing.assert_close(gray[1], tiles[1], rtol=0, atol=0)
