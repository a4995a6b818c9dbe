"""Attention and feed-forward building blocks with the parameter names of the LDM/sgm code
(`to_q`, `to_k`, `to_v`, `to_out.0`; `net.0.proj`, `net.2`), so public weights load by name.

The attention kernel is injected: `attention(q, k, v, heads, mask=None) -> out`, with q/k/v as
(batch, tokens, heads * dim_head). The host passes its optimized attention (xformers, SDPA, ...);
the default here is PyTorch's scaled_dot_product_attention.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

AttentionFn = Callable[..., torch.Tensor]


def sdpa_attention(q, k, v, heads: int, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """softmax(q kᵀ / √d + mask) v per head; `mask` is additive, broadcastable to (b, heads, n, m)."""
    q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=heads) for t in (q, k, v))
    if mask is not None:
        mask = mask.to(q.dtype)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return rearrange(out, "b h n d -> b n (h d)")


class Attention(nn.Module):
    """Multi-head (self- or cross-) attention; `positional` optionally transforms q and k per
    head (rotary encodings) and `bias` is an additive mask or relative-position bias."""

    def __init__(self, query_dim: int, heads: int, dim_head: int, context_dim: Optional[int] = None,
                 dropout: float = 0.0, operations=nn):
        super().__init__()
        inner_dim = heads * dim_head
        context_dim = context_dim or query_dim
        self.heads = heads
        self.dim_head = dim_head
        self.to_q = operations.Linear(query_dim, inner_dim, bias=False)
        self.to_k = operations.Linear(context_dim, inner_dim, bias=False)
        self.to_v = operations.Linear(context_dim, inner_dim, bias=False)
        self.to_out = nn.Sequential(operations.Linear(inner_dim, query_dim), nn.Dropout(dropout))

    def forward(self, x, context=None, mask=None, attention: AttentionFn = sdpa_attention, context_repeat: int = 1):
        """`context_repeat` r: `context` holds one row per r consecutive rows of x (e.g. one text per
        video, shared by its h·w positions); keys and values are projected once, and the r rows'
        queries attend to them as one row of r·n tokens (the same result as repeating keys and values
        r times, without their r copies: at 77 text tokens and 16 frames, ~5x the queries' size)."""
        context = x if context is None else context
        q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
        if context_repeat > 1 and mask is None:
            rows, n, inner = q.shape
            out = attention(q.reshape(rows // context_repeat, context_repeat * n, inner), k, v, self.heads)
            return self.to_out(out.reshape(rows, n, inner))
        if context_repeat > 1:
            k, v = k.repeat_interleave(context_repeat, dim=0), v.repeat_interleave(context_repeat, dim=0)
        return self.to_out(attention(q, k, v, self.heads, mask=mask))


class GEGLU(nn.Module):
    def __init__(self, dim_in: int, dim_out: int, operations=nn):
        super().__init__()
        self.proj = operations.Linear(dim_in, dim_out * 2)

    def forward(self, x):
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * F.gelu(gate)


class FeedForward(nn.Module):
    """GEGLU feed-forward with 4x expansion, as in the SD transformer blocks."""

    def __init__(self, dim: int, dim_out: Optional[int] = None, mult: int = 4, dropout: float = 0.0, operations=nn):
        super().__init__()
        inner = dim * mult
        self.net = nn.Sequential(GEGLU(dim, inner, operations), nn.Dropout(dropout),
                                 operations.Linear(inner, dim_out or dim))

    def forward(self, x):
        return self.net(x)
