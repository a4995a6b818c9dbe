"""Windows and blend weights (time and space), and the decoder's temporal layers (torch only)."""

import math

import pytest
import torch

from videoldm_core.temporal_decoder import DecoderTemporalBlock, TemporalDecoderFormatError, TimeMixConv, split_svd_vae
from videoldm_core.windows import blend_weights, overlap_of, windows


@pytest.mark.parametrize("length, window, overlap", [(1, 4, 1), (16, 16, 4), (17, 8, 2), (128, 16, 4), (10, 3, 2), (5, 1, 0)])
def test_windows_cover_everything_with_full_windows(length, window, overlap):
    ranges = windows(length, window, overlap)
    covered = torch.zeros(length)
    for start, end in ranges:
        assert end - start == min(window, length)
        covered[start:end] += 1
    assert covered.min() >= 1 and ranges[0][0] == 0 and ranges[-1][1] == length
    assert all(b[0] - a[0] <= window - overlap for a, b in zip(ranges, ranges[1:]))


@pytest.mark.parametrize("window, overlap, message", [(0, 0, "window must be at least 1, found 0"),
                                                      (4, 4, r"overlap must be in 0..window-1 \(3\), found 4"),
                                                      (4, -1, "found -1")])
def test_bad_window_settings_say_what_is_allowed(window, overlap, message):
    with pytest.raises(ValueError, match=message) as refused:
        windows(10, window, overlap)
    assert type(refused.value).__module__ == "videoldm"   # the pack's error, as the server reports it


def test_blend_weights_are_positive_smooth_and_one_where_alone():
    length, ranges = 20, windows(20, 8, 3)
    total = torch.zeros(length)
    for start, end in ranges:
        w = blend_weights(start, end, length, overlap_of(ranges))
        assert (w > 0).all() and (w <= 1).all()
        total[start:end] += w
    assert total.min() > 0.5
    first = blend_weights(*ranges[0], length, 3)
    assert torch.all(first[:5] == 1) and first[-1] < first[-2] < first[-3]


def test_neighbours_cross_fade_over_their_overlap_as_a_raised_cosine():
    """Over an overlap of r items the later window rises as sin²(π(i + 1) / (2(r + 1))) and the earlier
    one falls as its mirror image: both strictly between 0 and 1, monotonic, summing to one. A linear
    ramp has a kink at each end of the overlap (a visible seam); no ramp at all is a hard cut."""
    length, ranges = 20, windows(20, 12, 4)
    assert ranges == [(0, 12), (8, 20)]
    ramp = overlap_of(ranges)
    assert ramp == 4
    earlier, later = (blend_weights(s, e, length, ramp) for s, e in ranges)
    rise = torch.tensor([math.sin(math.pi * (i + 1) / (2 * (ramp + 1))) ** 2 for i in range(ramp)])
    torch.testing.assert_close(later[:ramp], rise)
    torch.testing.assert_close(earlier[-ramp:], rise.flip(0))
    torch.testing.assert_close(earlier[-ramp:] + later[:ramp], torch.ones(ramp))
    assert ((later[:ramp] > 0) & (later[:ramp] < 1)).all() and (later[1:ramp] > later[:ramp - 1]).all()
    assert torch.all(earlier[:-ramp] == 1) and torch.all(later[ramp:] == 1)   # alone: the window's own values


def test_fresh_decoder_temporal_layers_are_the_identity():
    torch.manual_seed(0)
    x = torch.randn(6, 32, 4, 4)
    assert torch.equal(DecoderTemporalBlock(32)(x, 3), x)
    y = x[:, :3].contiguous()
    assert torch.allclose(TimeMixConv(3)(y, 3), y, atol=1e-6)  # convolution kernels may reorder the sums


def test_decoder_blend_weights_the_temporal_branch_by_alpha():
    block = DecoderTemporalBlock(32, alpha=2.0)
    torch.manual_seed(1)
    for p in block.time_stack.parameters():
        torch.nn.init.normal_(p, std=0.1)
    x = torch.randn(4, 32, 2, 2)
    z = x.reshape(1, 4, 32, 2, 2).movedim(1, 2)
    temporal = block.time_stack(z).movedim(2, 1).reshape(4, 32, 2, 2)
    alpha = torch.sigmoid(torch.tensor(2.0))
    assert torch.allclose(block(x, 4), alpha * temporal + (1 - alpha) * x, atol=1e-6)


def test_svd_vae_without_temporal_layers_is_refused():
    with pytest.raises(TemporalDecoderFormatError, match="no temporal decoder layers"):
        split_svd_vae({"decoder.conv_in.weight": torch.zeros(1)}, "sd_vae.safetensors")
