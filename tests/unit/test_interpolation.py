"""Keyframe interpolation maths: layouts, windows, augmentation, the regime/level embedding."""

import math

import pytest
import torch

from videoldm_core.temporal_adapter import AdapterFormatError, AdapterSpec, TemporalAdapter, read_adapter_spec, save_adapter
from videoldm_core.interpolation import (InterpolationEmbedding, InterpolationError, augment_keyframes, check_keyframes,
                                         dense_length, interpolation_labels, keyframe_positions, keyframe_windows,
                                         regime_fps, regime_label)
from videoldm_core.placement import SpatialLayer, videoldm_slots


@pytest.mark.parametrize("t, expected", [(2, 5), (3, 9), (17, 65)])
def test_dense_length_is_4t_minus_3(t, expected):
    assert dense_length(t) == expected and dense_length(dense_length(t)) == 16 * t - 15
    assert keyframe_positions(t)[-1] == expected - 1


@pytest.mark.parametrize("keyframes, window", [(17, 5), (2, 5), (9, 2), (64, 8), (10, 4)])
def test_windows_cover_every_keyframe_and_share_one(keyframes, window):
    windows = keyframe_windows(keyframes, window)
    assert windows[0].first == 0 and windows[-1].first + windows[-1].count == keyframes
    assert all(w.count <= window and w.count >= 2 for w in windows)
    for a, b in zip(windows, windows[1:]):
        assert b.first == a.first + a.count - 1  # one shared keyframe, the seam
    covered = set()
    for w in windows:
        covered |= set(range(4 * w.first, 4 * w.first + dense_length(w.count)))
    assert covered == set(range(dense_length(keyframes)))


def test_bad_input_is_named():
    with pytest.raises(InterpolationError, match="at least 2 keyframes.*found 1"):
        check_keyframes(torch.zeros(1, 4, 8, 8))
    nested = torch.nested.nested_tensor([torch.zeros(4, 8, 8), torch.zeros(4, 16, 16)])
    with pytest.raises(InterpolationError, match="one size"):
        check_keyframes(nested)
    with pytest.raises(InterpolationError, match="regime in"):
        regime_label("2x")
    with pytest.raises(InterpolationError, match="at least 2 keyframes, found 1"):
        keyframe_windows(8, 1)
    with pytest.raises(InterpolationError, match=r"\[0, 1\], found 1.5"):
        augment_keyframes(torch.zeros(2, 4, 8, 8), 1.5)


def test_augmentation_level_zero_is_exact_and_seeded():
    z = torch.randn(3, 4, 8, 8)
    assert augment_keyframes(z, 0.0) is z
    a = augment_keyframes(z, 0.2, torch.Generator().manual_seed(1))
    b = augment_keyframes(z, 0.2, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and 0.1 < (a - z).std() < 0.3


def test_embedding_starts_at_zero_and_separates_regimes_when_trained():
    emb = InterpolationEmbedding(32)
    labels = interpolation_labels(5, 1, 0.1)
    assert labels.shape == (5, 2) and torch.count_nonzero(emb(labels)) == 0
    torch.manual_seed(0)
    for p in emb.parameters():
        torch.nn.init.normal_(p)
    assert (emb(interpolation_labels(5, 0, 0.1)) - emb(interpolation_labels(5, 1, 0.1))).abs().max() > 1e-3
    assert (emb(interpolation_labels(5, 0, 0.1)) - emb(interpolation_labels(5, 0, 0.5))).abs().max() > 1e-3


def test_the_augmentation_level_is_embedded_as_a_timestep_of_a_1000_step_schedule():
    """The level (0..0.25) goes into the sinusoids [cos | sin] scaled by 1000, as a diffusion timestep
    would: embedding = regime row + level_embed(sinusoids(1000 · level)). Unscaled, every level lies
    within a quarter radian of level 0 on every frequency and the trained levels look nearly alike."""
    channels, half = 32, 16
    emb = InterpolationEmbedding(channels)
    torch.manual_seed(0)
    for p in emb.parameters():
        torch.nn.init.normal_(p)
    freqs = [10000.0 ** (-k / half) for k in range(half)]
    for regime, level in ((0, 0.0), (1, 0.1), (0, 0.25)):
        steps = 1000.0 * level
        sinusoids = torch.tensor([[math.cos(steps * f) for f in freqs] + [math.sin(steps * f) for f in freqs]])
        with torch.no_grad():
            expected = emb.regime_embed.weight[regime] + emb.level_embed(sinusoids)[0]
            got = emb(interpolation_labels(3, regime, level))
        assert got.shape == (3, channels)
        for row in got:
            torch.testing.assert_close(row, expected, atol=1e-4, rtol=1e-4)


def test_4t_to_16t_learns_from_clips_read_at_four_times_the_keyframe_rate():
    """Paper: T→4T takes 1.875 fps keyframes to 7.5 fps, 4T→16T takes 7.5 fps to 30 fps; for videos
    of keyframes at `fps`, the second regime's keyframes are once interpolated, so its clips are read
    at 4 · fps (reading them slower would train it on motion 16 times too large)."""
    assert regime_fps(1.875, 0) == 1.875 and regime_fps(7.5, 0) == 7.5
    assert regime_fps(1.875, 1) == 7.5 and regime_fps(7.5, 1) == 30.0
    assert regime_fps(1.875, 1) == regime_fps(1.875, 0) * (dense_length(2) - 1)   # one interpolation step: 4x


def test_spec_records_the_interpolation_embedding(tmp_path):
    layout = [SpatialLayer("input_blocks.1.0", "resblock", 32, emb_channels=128)]
    spec = AdapterSpec("SD1.x", "videoldm", videoldm_slots(layout, context_channels=8),
                       context_encoder=dict(in_channels=5, width=8, levels=2), interpolation=dict(emb_channels=128, regimes=2))
    adapter = TemporalAdapter(spec)
    assert "interpolation_embed.regime_embed.weight" in adapter.state_dict()
    save_adapter(tmp_path / "i.safetensors", adapter)
    assert read_adapter_spec(tmp_path / "i.safetensors").has_interpolation_embedding
    with pytest.raises(AdapterFormatError, match="interpolation: expected the fields"):
        AdapterSpec("SD1.x", "videoldm", videoldm_slots(layout), interpolation=dict(regimes=2))
