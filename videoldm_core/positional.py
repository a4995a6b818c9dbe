"""Positional encodings for time (frame index) in temporal attention.

- absolute sinusoidal, with a maximum length (sgm's `time_pos_embed` input; AnimateDiff's `pe`);
- relative sinusoidal with an optional attention distance limit (Video LDM appendix: "we use
  relative sinusoidal positional encodings ... mask the temporal attention layers such that we
  only attend over a maximum frame distance of 8 frames" when running longer than trained).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from einops import rearrange
from torch import nn

from .errors import VideoLDMError
from .layer_factory import zero_


class FrameLimitError(VideoLDMError):
    """More frames than an absolute positional encoding covers."""


def sinusoidal_embedding(positions: torch.Tensor, dim: int, max_period: float = 10000.0,
                         interleaved: bool = False) -> torch.Tensor:
    """Sinusoids of `positions` (any shape) -> (..., dim).

    `interleaved=False`: [cos | sin] halves, the layout of the LDM/sgm `timestep_embedding`
    (Video LDM's `time_pos_embed` input). `interleaved=True`: sin at even, cos at odd channels,
    the layout of AnimateDiff's `pe` buffer.
    """
    positions = positions.float()
    if interleaved:
        freqs = torch.exp(torch.arange(0, dim, 2, device=positions.device) * (-math.log(max_period) / dim))
        args = positions[..., None] * freqs
        out = positions.new_zeros(*positions.shape, dim)
        out[..., 0::2] = torch.sin(args)
        out[..., 1::2] = torch.cos(args)[..., : dim // 2]
        return out
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=positions.device) / half)
    args = positions[..., None] * freqs
    out = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        out = torch.cat([out, torch.zeros_like(out[..., :1])], dim=-1)
    return out


def check_frame_limit(num_frames: int, max_frames: int, what: str = "this temporal adapter"):
    if num_frames > max_frames:
        raise FrameLimitError(
            f"{what} encodes at most {max_frames} frames (absolute positional encoding), but {num_frames} "
            f"frames were sampled. To go longer, sample in overlapping windows of <= {max_frames} frames "
            "(core 'Context Windows (Manual)' node), or use an adapter with relative positions and an "
            "attention distance limit.")


def distance_mask(num_frames: int, attention_distance: Optional[int], device=None) -> Optional[torch.Tensor]:
    """Additive (T, T) mask: 0 where |i - j| <= attention_distance, -inf elsewhere; None if unlimited."""
    if attention_distance is None or attention_distance >= num_frames - 1:
        return None
    idx = torch.arange(num_frames, device=device)
    far = (idx[:, None] - idx[None, :]).abs() > attention_distance
    return torch.zeros(num_frames, num_frames, device=device).masked_fill(far, float("-inf"))


class RelativeSinusoidalBias(nn.Module):
    """Per-head attention bias from sinusoids of the relative frame distance (i - j), through a
    zero-initialised linear map, so a fresh layer adds nothing. Works for any number of frames."""

    def __init__(self, heads: int, dim: int = 64, max_period: float = 10000.0, operations=nn):
        super().__init__()
        self.dim, self.max_period = dim, max_period
        self.proj = zero_(operations.Linear(dim, heads))

    def forward(self, num_frames: int, device=None) -> torch.Tensor:
        idx = torch.arange(num_frames, device=device)
        features = sinusoidal_embedding(idx[:, None] - idx[None, :], self.dim, self.max_period)
        bias = self.proj(features.to(self.proj.weight.dtype))  # (T, T, heads)
        return rearrange(bias, "i j h -> 1 h i j")
