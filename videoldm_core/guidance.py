"""Context guidance (Video LDM §3.1.1): f'(z; c_S) = f(z) + s · (f(z; c_S) − f(z)), s ≥ 1,
combined with text classifier-free guidance.

With w the text scale, the context-guided conditional prediction is text-guided against the
negative prompt (which also sees the context):

    g   = f(z; p) + s · (f(z; p, c_S) − f(z; p))
    out = f(z; n, c_S) + w · (g − f(z; n, c_S))

s = 1 is plain CFG on context-conditioned branches (the context-dropped branch is not run);
w = 1 is the paper's formula exactly (the negative branch is not run); both 1 is f(z; p, c_S).
"""

from __future__ import annotations

from typing import Optional

import torch


def needs_branches(cfg: float, context_scale: float) -> tuple[bool, bool]:
    """(run the negative branch, run the context-dropped branch)."""
    return cfg != 1.0, context_scale != 1.0


def context_guidance(cond: torch.Tensor, cfg: float, context_scale: float,
                     uncond: Optional[torch.Tensor] = None, cond_no_context: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Combine the branches the scales need (see `needs_branches`); written in the host's CFG
    order, uncond + (cond − uncond) · w, so that s = 1 matches core CFG bit for bit."""
    guided = cond
    if context_scale != 1.0:
        guided = cond_no_context + (cond - cond_no_context) * context_scale
    if cfg != 1.0:
        guided = uncond + (guided - uncond) * cfg
    return guided
