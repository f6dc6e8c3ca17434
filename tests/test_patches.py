"""Patches and masks: patchify/unpatchify round-trip exactly with MAE's layout; MAE's mask
keeps exactly the requested patches, unique, with the inverse permutation restoring order;
SimMIM's block masks and BEiT's block-wise masks mask what they promise."""

import torch

from fewlabels.models.patches import (
    block_random_mask,
    blockwise_mask,
    num_kept,
    patch_mask_to_pixels,
    patchify,
    random_masking,
    unpatchify,
)


def test_patchify_layout_and_exact_round_trip():
    images = torch.randn(2, 3, 8, 12)
    patches = patchify(images, 4)  # grid 2 x 3
    assert patches.shape == (2, 6, 48)
    # patch l = i * w + j holds the pixels of rows 4i.., columns 4j.., as (row, col, channel)
    expected = images[1, :, 4:8, 8:12].permute(1, 2, 0).flatten()
    assert torch.equal(patches[1, 1 * 3 + 2], expected)
    assert torch.equal(unpatchify(patches, 4, 3, grid=(2, 3)), images)
    square = torch.randint(0, 256, (3, 1, 28, 28)).float()
    assert torch.equal(unpatchify(patchify(square, 4), 4, 1), square)


def test_patch_mask_to_pixels_covers_the_masked_patches():
    mask = torch.tensor([[True, False, False, True]])
    pixels = patch_mask_to_pixels(mask, 2)
    assert pixels.shape == (1, 1, 4, 4)
    assert pixels[0, 0, :2, :2].all() and not pixels[0, 0, :2, 2:].any()
    assert not pixels[0, 0, 2:, :2].any() and pixels[0, 0, 2:, 2:].all()


def test_mae_masking_keeps_exactly_the_requested_patches_and_restores_order():
    generator = torch.Generator().manual_seed(0)
    batch, length = 64, 49
    for ratio, keep in [(0.75, 12), (0.5, 24), (0.9, 4), (0.25, 36)]:
        assert num_kept(length, ratio) == keep
        masking = random_masking(batch, length, ratio, generator)
        assert masking.keep_indices.shape == (batch, keep)
        assert (masking.mask.sum(1) == length - keep).all()  # exactly, in every image
        for row in range(batch):
            kept = masking.keep_indices[row]
            assert len(set(kept.tolist())) == keep  # unique
            assert not masking.mask[row, kept].any()  # the kept ones are the visible ones
        # the restore indices are the inverse of the shuffle: putting the kept tokens
        # first and the removed ones after, then gathering, gives back the grid order
        tokens = torch.arange(length).expand(batch, -1)  # token l is l
        shuffle = masking.restore_indices.argsort(1)
        assert torch.equal(shuffle[:, :keep], masking.keep_indices)
        shuffled = torch.gather(tokens, 1, shuffle)
        assert torch.equal(torch.gather(shuffled, 1, masking.restore_indices), tokens)
    # different images get different masks, and the same generator state the same masks
    first = random_masking(8, 49, 0.75, torch.Generator().manual_seed(3)).mask
    again = random_masking(8, 49, 0.75, torch.Generator().manual_seed(3)).mask
    assert torch.equal(first, again) and not torch.equal(first[0], first[1])


def test_each_patch_is_kept_equally_often():
    masking = random_masking(4000, 16, 0.75, torch.Generator().manual_seed(1))
    kept_fraction = (~masking.mask).float().mean(0)  # [16], 0.25 each in expectation
    assert (kept_fraction - 0.25).abs().max() < 0.04


def test_simmim_block_masks():
    generator = torch.Generator().manual_seed(0)
    single = block_random_mask(32, 7, 0.6, 1, generator)
    assert single.shape == (32, 49) and (single.sum(1) == round(0.6 * 49)).all()
    blocks = block_random_mask(500, 7, 0.6, 2, generator).view(500, 7, 7)
    # each mask is a union of 2 x 2 blocks on a grid shifted by (0 or 1, 0 or 1): inside
    # every block of some shift the mask is constant
    for mask in blocks[:50]:
        assert any(_constant_on_blocks(mask, dy, dx) for dy in (0, 1) for dx in (0, 1))
    assert abs(blocks.float().mean().item() - 0.6) < 0.05


def _constant_on_blocks(mask, dy, dx):
    padded = torch.full((10, 10), -1)
    padded[dy:dy + 7, dx:dx + 7] = mask.long()
    for top in range(0, 8, 2):
        for left in range(0, 8, 2):
            values = padded[top:top + 2, left:left + 2]
            values = values[values >= 0]
            if len(values) and len(values.unique()) > 1:
                return False
    return True


def test_beit_blockwise_masking_reaches_its_target_without_passing_it():
    generator = torch.Generator().manual_seed(0)
    target = round(0.4 * 49)
    mask = blockwise_mask(256, 7, target, min_block=4, generator=generator)
    counts = mask.sum(1)
    assert (counts <= target).all()
    assert counts.float().mean() >= target - 1.5 and (counts >= target - 4).all()
    grid_mask = blockwise_mask(64, 14, 75, min_block=16, generator=generator)
    assert (grid_mask.sum(1) <= 75).all() and grid_mask.sum(1).float().mean() > 70
