"""Metrics for videos whose motion is known (the moving-shapes data, videoldm_core.moving_shapes),
for the toy family's evaluation of the paper's ablations at small scale:

- `shape_centroids` + `trajectory_jerk`: where the shapes are in every frame, and how far their
  motion is from smooth (constant-velocity shapes that bounce have ~0 second difference; frames
  made independently jump around);
- `temporal_difference_error`: how far a video's frame-to-frame changes are from the reference's
  (flicker against ground-truth motion; 0 when every change matches);
- `boundary_jump`: the frame change across given cuts (rollout segment boundaries) relative to the
  change everywhere else (1 = a boundary is as smooth as the rest);
- `mean_and_spread`: a metric over seeds, as mean and standard deviation.

Videos are (T, 3, H, W) in [-1, 1] or [0, 1] (say which with `signed`); all pure torch.
"""

from __future__ import annotations

import torch
from torch import Tensor

# The generator draws shapes at HSV value 0.95 and backgrounds from channels <= 0.7, so a pixel's
# largest channel separates them; partly covered edge pixels count by how far they are from either.
SHAPE_VALUE, BACKGROUND_VALUE = 0.95, 0.7


def _unit(video: Tensor, signed: bool) -> Tensor:
    if video.ndim != 4 or video.shape[1] != 3:
        raise ValueError(f"expected a video (T, 3, H, W), found shape {tuple(video.shape)}.")
    return (video.float() + 1) / 2 if signed else video.float()


def shape_centroids(video: Tensor, signed: bool = True) -> tuple[Tensor, Tensor]:
    """(centroids (T, 2) as x, y pixel coordinates of the shapes' cover-weighted centre, cover (T,)
    the shapes' area in pixels). Frames without shapes get NaN centroids."""
    x = _unit(video, signed)
    value = x.amax(dim=1)                                        # (T, H, W)
    cover = ((value - BACKGROUND_VALUE) / (SHAPE_VALUE - BACKGROUND_VALUE)).clamp(0, 1)
    h, w = cover.shape[-2:]
    ys = torch.arange(h, dtype=cover.dtype) + 0.5
    xs = torch.arange(w, dtype=cover.dtype) + 0.5
    area = cover.sum(dim=(1, 2))
    cx = (cover * xs[None, None, :]).sum(dim=(1, 2)) / area
    cy = (cover * ys[None, :, None]).sum(dim=(1, 2)) / area
    return torch.stack([cx, cy], dim=-1), area


def trajectory_jerk(centroids: Tensor) -> float:
    """Mean length of the second difference of a (T, 2) trajectory, in pixels per frame²,
    over the steps where all three frames have a centroid."""
    if centroids.ndim != 2 or centroids.shape[0] < 3:
        raise ValueError(f"expected a trajectory (T >= 3, 2), found shape {tuple(centroids.shape)}.")
    second = centroids[2:] - 2 * centroids[1:-1] + centroids[:-2]
    norms = second.norm(dim=-1)
    norms = norms[~norms.isnan()]
    if norms.numel() == 0:
        raise ValueError("no three consecutive frames with shapes in them; cannot measure a trajectory.")
    return float(norms.mean())


def temporal_difference_error(video: Tensor, reference: Tensor, signed: bool = True) -> float:
    """Mean |(x_{t+1} − x_t) − (r_{t+1} − r_t)| over pixels and steps, in [0, 1] units."""
    x, r = _unit(video, signed), _unit(reference, signed)
    if x.shape != r.shape:
        raise ValueError(f"video and reference must have the same shape, found {tuple(x.shape)} and {tuple(r.shape)}.")
    return float(((x[1:] - x[:-1]) - (r[1:] - r[:-1])).abs().mean())


def frame_changes(video: Tensor, signed: bool = True) -> Tensor:
    """(T − 1,) mean absolute change from each frame to the next, in [0, 1] units."""
    x = _unit(video, signed)
    return (x[1:] - x[:-1]).abs().mean(dim=(1, 2, 3))


def boundary_jump(video: Tensor, boundaries, signed: bool = True) -> float:
    """Mean frame change across the cuts (a boundary b is the step from frame b − 1 to b) divided by
    the mean change at every other step."""
    changes = frame_changes(video, signed)
    steps = sorted({int(b) - 1 for b in boundaries})
    if not steps or steps[0] < 0 or steps[-1] >= changes.numel():
        raise ValueError(f"expected boundaries in 1..{changes.numel()}, found {sorted(boundaries)}.")
    at = torch.zeros_like(changes, dtype=torch.bool)
    at[steps] = True
    if at.all():
        raise ValueError("every step is a boundary; there is nothing to compare against.")
    return float(changes[at].mean() / changes[~at].mean())


def mean_and_spread(values) -> tuple[float, float]:
    """(mean, standard deviation) of a metric over seeds (spread 0 for one value)."""
    v = torch.tensor([float(x) for x in values], dtype=torch.float64)
    if v.numel() == 0:
        raise ValueError("expected at least one value.")
    return float(v.mean()), float(v.std()) if v.numel() > 1 else 0.0
