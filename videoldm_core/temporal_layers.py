"""The two kinds of temporal mixing layer of Video LDM (§3.1): "(i) temporal attention and
(ii) residual blocks based on 3D convolutions". Parameter names follow sgm's `VideoResBlock.time_stack`
and `VideoTransformerBlock` so that SVD's temporal weights load by name.

Frames are laid out as in the paper: spatial layers see (b t) c h w, temporal layers see the
frames of each video together.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .attention import Attention, AttentionFn, FeedForward, sdpa_attention
from .layer_factory import zero_


class TemporalResBlock(nn.Module):
    """GroupNorm-SiLU-Conv3d(k,1,1) → + timestep embedding → GroupNorm-SiLU-Dropout-Conv3d(k,1,1),
    plus identity skip. The last conv is zero-initialised, so a fresh block is the identity.
    `emb_channels=0`: no timestep embedding (the autoencoder decoder's temporal blocks)."""

    def __init__(self, channels: int, emb_channels: int, kernel_t: int = 3, dropout: float = 0.0,
                 norm_groups: int = 32, operations=nn):
        super().__init__()
        conv = dict(kernel_size=(kernel_t, 1, 1), padding=(kernel_t // 2, 0, 0))
        self.in_layers = nn.Sequential(operations.GroupNorm(norm_groups, channels), nn.SiLU(),
                                       operations.Conv3d(channels, channels, **conv))
        self.emb_layers = nn.Sequential(nn.SiLU(), operations.Linear(emb_channels, channels)) if emb_channels else None
        self.out_layers = nn.Sequential(operations.GroupNorm(norm_groups, channels), nn.SiLU(), nn.Dropout(dropout),
                                        zero_(operations.Conv3d(channels, channels, **conv)))

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        """x: (b, c, t, h, w); emb: (b, t, emb_channels), the diffusion timestep embedding per frame."""
        h = self.in_layers(x)
        if self.emb_layers is not None:
            h = h + self.emb_layers(emb).to(h.dtype).movedim(1, 2)[..., None, None]
        return x + self.out_layers(h)


class TemporalTransformerBlock(nn.Module):
    """Attention over the frames at each spatial position (sgm `VideoTransformerBlock`):
    [LayerNorm + GEGLU ff_in] → LayerNorm + self-attention over frames → [LayerNorm + cross-attention
    to text] → LayerNorm + GEGLU ff, each with a residual. Output projections start at zero."""

    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: Optional[int] = None,
                 ff_in: bool = True, cross_attention: bool = True, dropout: float = 0.0, operations=nn):
        super().__init__()
        if ff_in:
            self.norm_in = operations.LayerNorm(dim)
            self.ff_in = FeedForward(dim, dropout=dropout, operations=operations)
            zero_(self.ff_in.net[2])
        else:
            self.ff_in = None
        self.norm1 = operations.LayerNorm(dim)
        self.attn1 = Attention(dim, heads, dim_head, dropout=dropout, operations=operations)
        if cross_attention:
            self.norm2 = operations.LayerNorm(dim)
            self.attn2 = Attention(dim, heads, dim_head, context_dim=context_dim, dropout=dropout, operations=operations)
            zero_(self.attn2.to_out[0])
        else:
            self.attn2 = None
        self.norm3 = operations.LayerNorm(dim)
        self.ff = FeedForward(dim, dropout=dropout, operations=operations)
        zero_(self.attn1.to_out[0])
        zero_(self.ff.net[2])

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None, mask: Optional[torch.Tensor] = None,
                attention: AttentionFn = sdpa_attention, context_repeat: int = 1) -> torch.Tensor:
        """x: ((b s), t, dim). `context`: text tokens for cross-attention, one row per `context_repeat`
        rows of x (per video: context_repeat = s), or None for self-attention over frames in attn2
        as well. `mask`: additive bias over (t, t)."""
        if self.ff_in is not None:
            x = self.ff_in(self.norm_in(x)) + x
        x = self.attn1(self.norm1(x), mask=mask, attention=attention) + x
        if self.attn2 is not None:
            x = self.attn2(self.norm2(x), context=context, mask=mask if context is None else None,
                           attention=attention,
                           context_repeat=context_repeat if context is not None else 1) + x
        return self.ff(self.norm3(x)) + x
