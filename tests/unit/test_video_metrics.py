"""Metrics for videos of known motion, checked against the moving-shapes generator's own tracks."""

import pytest
import torch

from videoldm_core.moving_shapes import moving_shapes_clip
from devtools.video_metrics import (boundary_jump, frame_changes, mean_and_spread, shape_centroids,
                                         temporal_difference_error, trajectory_jerk)


def test_centroids_follow_the_generators_track():
    clip = moving_shapes_clip(3, 12, 64, 64)          # one green square
    assert len(clip.tracks) == 1
    centroids, area = shape_centroids(clip.frames)
    error = (centroids - clip.tracks[0].centre).norm(dim=-1)
    print(f"centroid error max {error.max():.3f} px")
    assert error.max() < 0.25 and (area > 50).all()


def test_smooth_motion_has_little_jerk_and_shuffled_frames_a_lot():
    clip = moving_shapes_clip(8, 24, 64, 64)
    smooth = trajectory_jerk(shape_centroids(clip.frames)[0])
    shuffled = trajectory_jerk(shape_centroids(clip.frames[torch.randperm(24, generator=torch.Generator().manual_seed(0))])[0])
    print(f"jerk {smooth:.3f} vs shuffled {shuffled:.3f} px/frame^2")
    assert smooth < 0.5 and shuffled > 5 * smooth


def test_temporal_difference_error_is_zero_on_the_reference_and_grows_with_flicker():
    clip = moving_shapes_clip(1, 8, 32, 32).frames
    assert temporal_difference_error(clip, clip) == 0.0
    assert temporal_difference_error(clip + 0.3, clip) == pytest.approx(0.0, abs=1e-6)   # a constant offset does not flicker
    g = torch.Generator().manual_seed(0)
    small = clip + 0.02 * torch.randn(clip.shape, generator=g)
    large = clip + 0.1 * torch.randn(clip.shape, generator=g)
    assert 0 < temporal_difference_error(small, clip) < temporal_difference_error(large, clip)


def test_boundary_jump_finds_a_cut():
    video = moving_shapes_clip(2, 16, 32, 32).frames
    assert boundary_jump(video, [8]) == pytest.approx(1.0, rel=0.5)
    cut = torch.cat([video[:8], moving_shapes_clip(5, 8, 32, 32).frames])
    assert boundary_jump(cut, [8]) > 5
    assert frame_changes(cut).shape == (15,)


def test_spread_and_bad_input():
    assert mean_and_spread([1.0, 3.0]) == pytest.approx((2.0, 2 ** 0.5))
    assert mean_and_spread([4.0]) == (4.0, 0.0)
    with pytest.raises(ValueError, match=r"video \(T, 3, H, W\), found shape \(8, 32, 32\)"):
        shape_centroids(torch.zeros(8, 32, 32))
    with pytest.raises(ValueError, match="no three consecutive frames with shapes"):
        trajectory_jerk(shape_centroids(-torch.ones(4, 3, 8, 8))[0])
    with pytest.raises(ValueError, match=r"boundaries in 1..3, found \[4\]"):
        boundary_jump(torch.zeros(4, 3, 8, 8), [4])
    with pytest.raises(ValueError, match="same shape"):
        temporal_difference_error(torch.zeros(4, 3, 8, 8), torch.zeros(5, 3, 8, 8))
