"""Patch-wise plans for video upscaling: partition of unity, exactness for one region, seams."""

import math

import pytest
import torch

from videoldm_core.video_upscale import TilingError, plan_tiles


@pytest.mark.parametrize("shape, tile, tile_ov, chunk, chunk_ov", [
    ((8, 16, 16), 8, 2, 4, 1), ((9, 13, 21), 6, 3, 5, 2), ((3, 5, 7), 16, 4, 8, 2), ((16, 32, 8), 8, 0, 16, 0)])
def test_weights_sum_to_one_everywhere(shape, tile, tile_ov, chunk, chunk_ov):
    plan = plan_tiles(*shape, tile, tile_ov, chunk, chunk_ov)
    total = torch.zeros(shape[0], 1, *shape[1:])
    for region, weight in zip(plan.regions, plan.weights):
        assert weight.shape == (region.frames[1] - region.frames[0], 1, region.rows[1] - region.rows[0],
                                region.cols[1] - region.cols[0])
        assert (weight > 0).all()
        total[region.slices()] += weight
    torch.testing.assert_close(total, torch.ones_like(total), atol=1e-6, rtol=0)


def test_every_frame_gets_the_same_spatial_tiling():
    plan = plan_tiles(12, 20, 20, 8, 2, 5, 1)
    tilings = {}
    for region in plan.regions:
        tilings.setdefault(region.frames, set()).add((region.rows, region.cols))
    assert len({frozenset(t) for t in tilings.values()}) == 1


def test_one_region_is_exactly_the_untiled_prediction():
    x = torch.randn(6, 4, 10, 12)
    plan = plan_tiles(6, 10, 12, 16, 4, 8, 2)
    assert len(plan.regions) == 1
    assert torch.equal(plan.blend(lambda r: x[r.slices()]), x)


def test_blending_a_position_independent_prediction_reproduces_it():
    """Predictions that agree on overlaps blend back to themselves (up to rounding)."""
    x = torch.randn(9, 4, 24, 20)
    plan = plan_tiles(9, 24, 20, 8, 3, 4, 2)
    assert len(plan.regions) > 8
    torch.testing.assert_close(plan.blend(lambda r: x[r.slices()] * 2), x * 2, atol=1e-5, rtol=1e-5)


def test_neighbouring_tiles_cross_fade_as_a_raised_cosine_over_their_overlap():
    """Where two tiles overlap by r latent pixels the blend moves from one tile's prediction to the
    other's as sin²(π(i + 1) / (2(r + 1))): every overlap pixel strictly between the two, rising
    smoothly. Weights that sum to one but do not ramp (each tile 1/2) or ramp linearly leave seams."""
    plan = plan_tiles(1, 12, 20, 12, 4, 4, 0)          # one frame, one row of tiles: columns [0, 12) and [8, 20)
    assert sorted(r.cols for r in plan.regions) == [(0, 12), (8, 20)]
    seam = plan.blend(lambda r: torch.full((1, 1, 12, 12), float(r.cols[0] > 0)))[0, 0]
    assert torch.all(seam == seam[:1])                 # the same across every row
    row, r = seam[0], 4
    rise = torch.tensor([math.sin(math.pi * (i + 1) / (2 * (r + 1))) ** 2 for i in range(r)])
    assert torch.all(row[:8] == 0) and torch.all(row[12:] == 1)
    torch.testing.assert_close(row[8:12], rise)
    assert ((row[8:12] > 0) & (row[8:12] < 1)).all() and (row[9:12] > row[8:11]).all()


@pytest.mark.parametrize("args, message", [
    ((4, 8, 8, 4, 4, 4, 1), "tile overlap must be smaller than the tile \\(4\\)"),   # tile smaller than / equal to overlap
    ((4, 8, 8, 4, 6, 4, 1), "tile overlap must be smaller"),
    ((4, 8, 8, 4, 1, 4, 4), "chunk overlap must be smaller than the chunk \\(4\\)"),
    ((4, 8, 8, 0, 0, 4, 1), "tile must be at least 1, found 0"),
])
def test_bad_settings_are_named(args, message):
    with pytest.raises(TilingError, match=message):
        plan_tiles(*args)


def test_blend_handles_stacked_videos():
    """cond and uncond stacked in one batch: each region's rows come from both."""
    x = torch.randn(2 * 6, 3, 10, 10)
    plan = plan_tiles(6, 10, 10, 6, 2, 4, 1)
    out = plan.blend(lambda r: x[plan.rows(r, 2)][..., slice(*r.rows), slice(*r.cols)], groups=2)
    torch.testing.assert_close(out, x, atol=1e-5, rtol=1e-5)


def test_a_plan_holds_per_axis_weights_not_a_map_per_region():
    """Memory: a plan for a 64-frame 512 x 512 latent in 64-px tiles (hundreds of regions) holds
    about T + H + W weights per overlap factor, not a latent-sized map per region."""
    plan = plan_tiles(64, 512, 512, 64, 8, 8, 2)
    assert len(plan.regions) > 500
    held = sum(w.numel() for axis in plan.axis_weights for w in axis)
    assert held < 2 * (64 + 512 + 512)
    assert plan.weight(0).shape == (8, 1, 64, 64)


def test_the_out_of_memory_fallback_halves_what_was_really_used_down_to_the_grid():
    from videoldm_core.video_upscale import smaller_tile

    assert smaller_tile(0, 32, 24) == 16          # whole frames: half the longer side
    assert smaller_tile(64, 32, 32) == 16         # a tile larger than the frame counts as the frame
    assert smaller_tile(24, 64, 64) == 8          # 12, down to the 8-pixel grid
    assert smaller_tile(8, 64, 64) is None        # nothing smaller to try


def test_the_fallbacks_overlap_follows_the_tile_really_used_and_stays_an_overlap():
    from videoldm_core.video_upscale import smaller_overlap

    assert smaller_overlap(16, 32, 16, 32, 32) == 8       # halved with the tile
    assert smaller_overlap(16, 4096, 16, 32, 32) == 8     # a tile past the frame counts as the frame (was 0: seams)
    assert smaller_overlap(16, 0, 16, 32, 32) == 8        # whole frames alike
    assert smaller_overlap(1, 64, 8, 64, 64) == 1         # at least one pixel where there was an overlap
    assert smaller_overlap(100, 4096, 8, 64, 64) == 7     # below the new tile (100 * 8 // 64 = 12)
    assert smaller_overlap(0, 64, 32, 64, 64) == 0        # none asked, none made


def accumulated_blend(plan, predict, groups, scale, channels_last):
    """The blend as it was before frames streamed: every region's weighted prediction added into one
    whole zero tensor in plan order (the reference blend_in_order must equal bit for bit)."""
    out = None
    for index, region in enumerate(plan.regions):
        part = predict(region)
        part = part.reshape(groups, region.frames[1] - region.frames[0], *part.shape[1:])
        if out is None:
            h, w = plan.shape[1] * scale, plan.shape[2] * scale
            tail = (h, w, part.shape[-1]) if channels_last else (part.shape[2], h, w)
            out = part.new_zeros(groups, plan.shape[0], *tail)
        out[(slice(None), *region.slices(scale, channels_last))] += part * plan.weight(index, scale, channels_last)
    return out


@pytest.mark.parametrize("groups, scale, channels_last", [(1, 1, False), (2, 1, False), (1, 8, True), (2, 4, True)])
def test_blend_in_order_yields_the_accumulated_blend_bit_for_bit_in_contiguous_blocks(groups, scale, channels_last):
    torch.manual_seed(0)
    plan = plan_tiles(23, 12, 20, 8, 3, 6, 2)    # 5 chunks x 2 x 3 tiles
    assert len({r.frames for r in plan.regions}) > 3 and len(plan.regions) > 12
    noise = {region: torch.randn(groups * (region.frames[1] - region.frames[0]),
                                 *((region.rows[1] - region.rows[0]) * scale, (region.cols[1] - region.cols[0]) * scale, 3)
                                 if channels_last else (3, (region.rows[1] - region.rows[0]) * scale,
                                                        (region.cols[1] - region.cols[0]) * scale))
             for region in plan.regions}
    reference = accumulated_blend(plan, noise.__getitem__, groups, scale, channels_last)
    blocks = list(plan.blend_in_order(noise.__getitem__, groups, scale, channels_last))
    starts = [start for start, _ in blocks]
    assert starts[0] == 0 and all(b == a + blk.shape[1] for (a, blk), b in zip(blocks, starts[1:]))
    assert sum(block.shape[1] for _, block in blocks) == 23 and len(blocks) > 1
    assert torch.equal(torch.cat([block for _, block in blocks], dim=1), reference)
    assert torch.equal(plan.blend(noise.__getitem__, groups, scale, channels_last), reference.reshape(groups * 23, *reference.shape[2:]))
