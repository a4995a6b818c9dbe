"""Context guidance (Video LDM §3.1.1): f'(z; c_S) = f(z) + s · (f(z; c_S) − f(z)), s ≥ 1,
combined with text classifier-free guidance.

With w the text scale, the context-guided conditional prediction is text-guided against the
negative prompt (which also sees the context):

    g   = f(z; p) + s · (f(z; p, c_S) − f(z; p))
    out = f(z; n, c_S) + w · (g − f(z; n, c_S))

s = 1 is plain CFG on context-conditioned branches (the context-dropped branch is not run);
w = 1 is the paper's formula exactly (the negative branch is not run); both 1 is f(z; p, c_S).
The text step is the host's own CFG (ComfyUI's cfg_function with its hooks); the core gives g.
"""

from __future__ import annotations

from typing import Optional

import torch


def with_context_guidance(cond: torch.Tensor, context_scale: float, cond_no_context: Optional[torch.Tensor] = None
                          ) -> torch.Tensor:
    """g = f(z; p) + s · (f(z; p, c_S) − f(z; p)): the conditional prediction with context guidance,
    written in the host's CFG order (base + (cond − base) · s); s = 1 is `cond` itself."""
    if context_scale == 1.0:
        return cond
    return cond_no_context + (cond - cond_no_context) * context_scale
