"""Positional encodings for time (frame index) in temporal attention.

- absolute sinusoidal, with a maximum length (sgm's `time_pos_embed` input; AnimateDiff's `pe`);
- relative sinusoidal with an optional attention distance limit (Video LDM appendix: "we use
  relative sinusoidal positional encodings ... mask the temporal attention layers such that we
  only attend over a maximum frame distance of 8 frames" when running longer than trained);
- rotary encodings plus a T5-style bucketed relative bias (LaVie's temporal attention).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from einops import rearrange
from torch import nn


class FrameLimitError(ValueError):
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


def distance_mask(num_frames: int, max_distance: Optional[int], device=None) -> Optional[torch.Tensor]:
    """Additive (T, T) mask: 0 where |i - j| <= max_distance, -inf elsewhere; None if unlimited."""
    if max_distance is None or max_distance >= num_frames - 1:
        return None
    idx = torch.arange(num_frames, device=device)
    far = (idx[:, None] - idx[None, :]).abs() > max_distance
    return torch.zeros(num_frames, num_frames, device=device).masked_fill(far, float("-inf"))


class RelativeSinusoidalBias(nn.Module):
    """Per-head attention bias from sinusoids of the relative frame distance (i - j), through a
    zero-initialised linear map, so a fresh layer adds nothing. Works for any number of frames."""

    def __init__(self, heads: int, dim: int = 64, max_period: float = 10000.0, operations=nn):
        super().__init__()
        self.dim, self.max_period = dim, max_period
        self.proj = operations.Linear(dim, heads)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, num_frames: int, device=None) -> torch.Tensor:
        idx = torch.arange(num_frames, device=device)
        features = sinusoidal_embedding(idx[:, None] - idx[None, :], self.dim, self.max_period)
        bias = self.proj(features.to(self.proj.weight.dtype))  # (T, T, heads)
        return rearrange(bias, "i j h -> 1 h i j")


class RelativePositionBias(nn.Module):
    """T5-style bucketed relative position bias (LaVie's `time_rel_pos_bias`)."""

    def __init__(self, heads: int = 8, num_buckets: int = 32, max_distance: int = 32, operations=nn):
        super().__init__()
        self.num_buckets, self.max_distance = num_buckets, max_distance
        self.relative_attention_bias = operations.Embedding(num_buckets, heads)

    def bucket(self, relative: torch.Tensor) -> torch.Tensor:
        half = self.num_buckets // 2
        ret = (relative < 0).long() * half  # key before query
        n = relative.abs()
        max_exact = half // 2
        is_small = n < max_exact
        large = max_exact + (torch.log(n.float().clamp(min=1) / max_exact) / math.log(self.max_distance / max_exact)
                             * (half - max_exact)).long()
        large = large.clamp(max=half - 1)
        return ret + torch.where(is_small, n, large)

    def forward(self, num_frames: int, device=None) -> torch.Tensor:
        idx = torch.arange(num_frames, device=device)
        buckets = self.bucket(idx[None, :] - idx[:, None])
        return rearrange(self.relative_attention_bias(buckets), "i j h -> 1 h i j")


class RotaryEmbedding(nn.Module):
    """Rotary position encoding of the first `dim` channels of each head (LaVie uses dim 32)."""

    def __init__(self, dim: int = 32, theta: float = 10000.0):
        super().__init__()
        self.dim = dim
        self.register_buffer("freqs", 1.0 / theta ** (torch.arange(0, dim, 2).float() / dim))

    def rotate(self, x: torch.Tensor, heads: int) -> torch.Tensor:
        """x: (batch, frames, heads * dim_head) -> same shape, rotated by frame index."""
        x = rearrange(x, "b t (h d) -> b h t d", h=heads)
        freqs = self.freqs.to(x.device)
        positions = torch.arange(x.shape[2], device=x.device, dtype=freqs.dtype)
        angles = torch.repeat_interleave(positions[:, None] * freqs, 2, dim=-1)  # (t, dim): pairs share a frequency
        rot, rest = x[..., : self.dim], x[..., self.dim:]
        pairs = rearrange(rot, "... (d r) -> ... d r", r=2)
        rotated_half = rearrange(torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1), "... d r -> ... (d r)")
        rot = rot * angles.cos().to(x.dtype) + rotated_half * angles.sin().to(x.dtype)
        return rearrange(torch.cat((rot, rest), dim=-1), "b h t d -> b t (h d)")
