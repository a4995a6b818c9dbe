"""Temporal modules as they sit in a UNet: each slot belongs to one spatial layer.

- `ResBlockSlot` (Video LDM layout): after a spatial ResBlock, a 3D-conv `time_stack` mixed in by
  `time_mixer` (sgm `VideoResBlock`).
- `TransformerSlot` (Video LDM layout): inside a spatial transformer, after each spatial block
  and before `proj_out`, frame positions (`time_pos_embed`) are added and a temporal block runs,
  mixed in by `time_mixer` (sgm `SpatialVideoTransformer`).
- `MotionModuleSlot` (AnimateDiff layout): after a spatial layer, a whole temporal transformer
  added residually with a zero-initialised output projection, no α.

Every slot takes the number of frames T per call: frames are the batch, (b t) first.
"""

from __future__ import annotations

from typing import Optional

import torch
from einops import rearrange, repeat
from torch import nn

from .alpha_blender import AlphaBlender
from .attention import Attention, AttentionFn, FeedForward, sdpa_attention
from .context import context_projection
from .layer_factory import zero_
from .positional import RelativeSinusoidalBias, check_frame_limit, distance_mask, sinusoidal_embedding
from .temporal_layers import TemporalResBlock, TemporalTransformerBlock


def combine_masks(*masks):
    present = [m for m in masks if m is not None]
    if not present:
        return None
    out = present[0]
    for m in present[1:]:
        out = out + m
    return out


class ContextInput(nn.Module):
    """`context_proj`: what a slot adds to its temporal layers' input from the context features
    (`context_channels` wide) at its resolution; absent when the adapter has no context encoder."""

    def init_context(self, context_channels: int, channels: int, operations):
        self.context_proj = context_projection(context_channels, channels, operations) if context_channels else None

    def with_context(self, x: torch.Tensor, features: Optional[torch.Tensor]) -> torch.Tensor:
        """x ((b t), c, h, w) plus the projected features ((b t), context_channels, h, w), if any."""
        if features is None or self.context_proj is None:
            return x
        return x + self.context_proj(features.to(x.dtype))


class ResBlockSlot(ContextInput):
    def __init__(self, channels: int, emb_channels: int, kernel_t: int = 3, merge_strategy: str = "learned_with_images",
                 alpha: float = 0.0, context_channels: int = 0, operations=nn):
        super().__init__()
        self.time_stack = TemporalResBlock(channels, emb_channels, kernel_t, operations=operations)
        self.time_mixer = AlphaBlender(merge_strategy, alpha)
        self.init_context(context_channels, channels, operations)

    def forward(self, x: torch.Tensor, emb: torch.Tensor, num_frames: int,
                image_only_indicator: Optional[torch.Tensor] = None,
                context_features: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x: the spatial ResBlock's output ((b t), c, h, w); emb: ((b t), emb_channels);
        context_features: the context encoder's map at this resolution, if frames are given."""
        z = rearrange(x, "(b t) c h w -> b c t h w", t=num_frames)
        z_in = rearrange(self.with_context(x, context_features), "(b t) c h w -> b c t h w", t=num_frames)
        z_temporal = self.time_stack(z_in, rearrange(emb, "(b t) e -> b t e", t=num_frames))
        z = self.time_mixer(z, z_temporal, image_only_indicator, alpha_layout="b t -> b 1 t 1 1")
        return rearrange(z, "b c t h w -> (b t) c h w")


class TransformerSlot(ContextInput):
    """One temporal block per spatial transformer depth. Positions: `absolute` (sinusoids of the
    frame index through `time_pos_embed`, added to the tokens) or `relative` (a per-head bias of
    the frame distance; works at any length and with an attention distance limit)."""

    def __init__(self, channels: int, heads: int, dim_head: int, depth: int = 1, context_dim: Optional[int] = None,
                 positional: str = "absolute", max_period: float = 10000.0, merge_strategy: str = "learned_with_images",
                 alpha: float = 0.0, ff_in: bool = True, cross_attention: bool = True, context_channels: int = 0,
                 operations=nn):
        super().__init__()
        inner_dim = heads * dim_head
        self.positional, self.max_period, self.channels = positional, max_period, channels
        self.reads_text = context_dim is not None   # else attn2 attends over the frames (sgm's temporal SA)
        self.time_stack = nn.ModuleList(
            TemporalTransformerBlock(inner_dim, heads, dim_head, context_dim, ff_in=ff_in,
                                     cross_attention=cross_attention, operations=operations)
            for _ in range(depth))
        if positional == "absolute":
            self.time_pos_embed = nn.Sequential(operations.Linear(channels, channels * 4), nn.SiLU(),
                                                zero_(operations.Linear(channels * 4, channels)))
        elif positional == "relative":
            self.time_rel_pos_bias = RelativeSinusoidalBias(heads, operations=operations)
        else:
            raise ValueError(f"transformer slots support 'absolute' or 'relative' positions, found {positional!r}")
        self.time_mixer = AlphaBlender(merge_strategy, alpha)
        self.init_context(context_channels, channels, operations)

    def frame_bias(self, num_frames: int, attention_distance: Optional[int], device) -> Optional[torch.Tensor]:
        rel = self.time_rel_pos_bias(num_frames, device) if self.positional == "relative" else None
        return combine_masks(rel, distance_mask(num_frames, attention_distance, device))

    def forward(self, x: torch.Tensor, depth_index: int, num_frames: int, context: Optional[torch.Tensor] = None,
                image_only_indicator: Optional[torch.Tensor] = None, attention_distance: Optional[int] = None,
                attention: AttentionFn = sdpa_attention, context_features: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x: the tokens after spatial block `depth_index`, ((b t), s, c). `context`: the spatial
        text context ((b t), n, d); the temporal layers attend to the first frame's text.
        `context_features`: the context encoder's map at this resolution ((b t), w, h, w')."""
        bt, s, _ = x.shape
        x_mix = x
        if context_features is not None and self.context_proj is not None:
            x_mix = x_mix + self.context_proj(context_features.to(x.dtype)).flatten(2).transpose(1, 2)
        if self.positional == "absolute":
            frames = torch.arange(num_frames, device=x.device)
            pos = self.time_pos_embed(sinusoidal_embedding(frames, self.channels, self.max_period).to(x.dtype))
            x_mix = x_mix + repeat(pos, "t c -> (b t) 1 c", b=bt // num_frames)
        block = self.time_stack[depth_index]
        # Video LDM's temporal layers read the first frame's text; one row per video, shared by its
        # s positions (projected once, not once per position)
        time_context = context[::num_frames] if context is not None and self.reads_text else None
        x_mix = rearrange(x_mix, "(b t) s c -> (b s) t c", t=num_frames)
        x_mix = block(x_mix, context=time_context, mask=self.frame_bias(num_frames, attention_distance, x.device),
                      attention=attention, context_repeat=s)
        x_mix = rearrange(x_mix, "(b s) t c -> (b t) s c", s=s)
        return self.time_mixer(x, x_mix, image_only_indicator)


class PositionalEncoding(nn.Module):
    """AnimateDiff's absolute sinusoidal table `pe` (1, max_len, channels), added to the tokens."""

    def __init__(self, channels: int, max_len: int):
        super().__init__()
        self.register_buffer("pe", sinusoidal_embedding(torch.arange(max_len), channels, interleaved=True)[None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_frame_limit(x.shape[1], self.pe.shape[1], "this motion module")
        return x + self.pe[:, : x.shape[1]].to(device=x.device, dtype=x.dtype)


class MotionAttention(Attention):
    """Temporal self-attention with the positions added to its input (AnimateDiff `VersatileAttention`)."""

    def __init__(self, channels: int, heads: int, max_len: int, operations=nn):
        super().__init__(channels, heads, channels // heads, operations=operations)
        self.pos_encoder = PositionalEncoding(channels, max_len)

    def forward(self, x, mask=None, attention: AttentionFn = sdpa_attention):
        return super().forward(self.pos_encoder(x), mask=mask, attention=attention)


class MotionBlock(nn.Module):
    def __init__(self, channels: int, heads: int, max_len: int, num_attention_blocks: int = 2, operations=nn):
        super().__init__()
        self.attention_blocks = nn.ModuleList(MotionAttention(channels, heads, max_len, operations)
                                              for _ in range(num_attention_blocks))
        self.norms = nn.ModuleList(operations.LayerNorm(channels) for _ in range(num_attention_blocks))
        self.ff = FeedForward(channels, operations=operations)
        self.ff_norm = operations.LayerNorm(channels)

    def forward(self, x, mask=None, attention: AttentionFn = sdpa_attention):
        for attn, norm in zip(self.attention_blocks, self.norms):
            x = attn(norm(x), mask=mask, attention=attention) + x
        return self.ff(self.ff_norm(x)) + x


class MotionTransformer(nn.Module):
    """AnimateDiff's `TemporalTransformer3DModel`: GroupNorm → proj_in → motion blocks over the
    frames at each position → proj_out (zero-initialised) → + input.

    `group_norm="frame"` normalises each frame alone, as the original AnimateDiff code does;
    `"video"` normalises over all frames of a video together, as diffusers'
    `AnimateDiffTransformer3D` does. The two give slightly different outputs for the same weights."""

    def __init__(self, channels: int, heads: int = 8, max_len: int = 32, depth: int = 1, norm_groups: int = 32,
                 group_norm: str = "frame", operations=nn):
        super().__init__()
        if group_norm not in ("frame", "video"):
            raise ValueError(f"group_norm must be 'frame' or 'video', found {group_norm!r}")
        self.group_norm = group_norm
        self.norm = operations.GroupNorm(norm_groups, channels, eps=1e-6)
        self.proj_in = operations.Linear(channels, channels)
        self.transformer_blocks = nn.ModuleList(MotionBlock(channels, heads, max_len, operations=operations)
                                                for _ in range(depth))
        self.proj_out = zero_(operations.Linear(channels, channels))

    def forward(self, x, num_frames: int, attention_distance: Optional[int] = None, attention: AttentionFn = sdpa_attention):
        _, _, h, w = x.shape
        if self.group_norm == "frame":
            z = rearrange(self.norm(x), "(b t) c h w -> (b h w) t c", t=num_frames)
        else:
            z = self.norm(rearrange(x, "(b t) c h w -> b c t h w", t=num_frames))
            z = rearrange(z, "b c t h w -> (b h w) t c")
        z = self.proj_in(z)
        mask = distance_mask(num_frames, attention_distance, x.device)
        for block in self.transformer_blocks:
            z = block(z, mask=mask, attention=attention)
        z = self.proj_out(z)
        return x + rearrange(z, "(b h w) t c -> (b t) c h w", h=h, w=w)


class MotionModuleSlot(nn.Module):
    def __init__(self, channels: int, heads: int = 8, max_len: int = 32, group_norm: str = "frame", operations=nn):
        super().__init__()
        self.temporal_transformer = MotionTransformer(channels, heads, max_len, group_norm=group_norm, operations=operations)

    def forward(self, x, num_frames: int, attention_distance: Optional[int] = None, attention: AttentionFn = sdpa_attention):
        return self.temporal_transformer(x, num_frames, attention_distance, attention)
