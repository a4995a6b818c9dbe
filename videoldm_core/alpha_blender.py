"""The learned mixing of spatial and temporal outputs (Video LDM §3.1: z' = α·z + (1−α)·l_φ(z)).

Setting α = 1 recovers the image model exactly. Strategies as in sgm's `AlphaBlender`:
`fixed` (α is the stored value), `learned` (α = sigmoid(mix_factor)), `learned_with_images`
(as learned, but frames flagged as images get α = 1 and bypass the temporal layers).

The UNet weights the *spatial* branch by α. The temporal VAE decoder of sgm/SVD weights the
*temporal* branch by α instead; `alpha_on="temporal"` selects that convention.
"""

from __future__ import annotations

from typing import Optional

import torch
from einops import rearrange
from torch import nn

MERGE_STRATEGIES = ("fixed", "learned", "learned_with_images")


def merge_alpha(merge_strategy: str, mix_factor: torch.Tensor) -> torch.Tensor:
    """α from the stored mix factor: raw for `fixed`, sigmoid otherwise."""
    return mix_factor if merge_strategy == "fixed" else torch.sigmoid(mix_factor)


def register_mix_factor(module: nn.Module, merge_strategy: str, alpha: float):
    """`module.mix_factor`: a buffer for `fixed` (α is not trained), a parameter otherwise."""
    value = torch.tensor([float(alpha)])
    if merge_strategy == "fixed":
        module.register_buffer("mix_factor", value)
    else:
        module.mix_factor = nn.Parameter(value)


def blend(alpha: torch.Tensor, x_spatial: torch.Tensor, x_temporal: torch.Tensor, alpha_on: str = "spatial") -> torch.Tensor:
    """α·spatial + (1−α)·temporal (UNet), or α·temporal + (1−α)·spatial (`alpha_on="temporal"`, decoder)."""
    alpha = alpha.to(device=x_spatial.device, dtype=x_spatial.dtype)  # a host may leave α on another device
    if alpha_on == "temporal":
        return alpha * x_temporal + (1.0 - alpha) * x_spatial
    return alpha * x_spatial + (1.0 - alpha) * x_temporal


class AlphaBlender(nn.Module):
    def __init__(self, merge_strategy: str = "learned_with_images", alpha: float = 0.0, alpha_on: str = "spatial"):
        super().__init__()
        if merge_strategy not in MERGE_STRATEGIES:
            raise ValueError(f"merge strategy must be one of {MERGE_STRATEGIES}, found {merge_strategy!r}")
        if alpha_on not in ("spatial", "temporal"):
            raise ValueError(f"alpha_on must be 'spatial' or 'temporal', found {alpha_on!r}")
        self.merge_strategy, self.alpha_on = merge_strategy, alpha_on
        register_mix_factor(self, merge_strategy, alpha)

    def alpha(self, image_only_indicator: Optional[torch.Tensor] = None) -> torch.Tensor:
        """α as a scalar tensor, or per frame (b, t) when images are flagged."""
        alpha = merge_alpha(self.merge_strategy, self.mix_factor)
        if self.merge_strategy == "learned_with_images" and image_only_indicator is not None:
            alpha = alpha.to(image_only_indicator.device)
            alpha = torch.where(image_only_indicator.bool(), torch.ones_like(alpha), alpha)
        return alpha

    def forward(self, x_spatial, x_temporal, image_only_indicator=None, alpha_layout: str = "b t -> (b t) 1 1"):
        """Blends two tensors of the same shape. A per-frame α (b, t), when images are flagged, is
        laid out to broadcast over x by `alpha_layout`, an einops pattern: "b t -> (b t) 1 1" for
        tokens ((b t), s, c), "b t -> b 1 t 1 1" for a video (b, c, t, h, w)."""
        alpha = self.alpha(image_only_indicator)
        if alpha.ndim == 2:
            alpha = rearrange(alpha, alpha_layout)
        return blend(alpha, x_spatial, x_temporal, self.alpha_on)
