"""Where temporal layers go in a UNet, described without the UNet itself.

A `SpatialLayer` is one ResBlock or spatial transformer of an SD UNet, named by its path in the
LDM layout ("input_blocks.1.0", "middle_block.1", ...). The host derives the list from the real
model; the functions here turn it into slot configurations for a placement:

- `videoldm`: the temporal structure of sgm's `VideoUNet` (Video LDM, SVD): a 3D-conv block with
  its α after every ResBlock, and inside every spatial transformer a temporal block per depth.
- `animatediff`: one motion module per block, after the block's last spatial transformer, else
  after its first ResBlock (AnimateDiff's motion-module positions).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional


@dataclass(frozen=True)
class SpatialLayer:
    path: str                       # e.g. "input_blocks.4.1"
    kind: str                       # "resblock" | "transformer"
    channels: int                   # ResBlock output channels / transformer input channels
    emb_channels: int = 0           # ResBlock: width of the diffusion timestep embedding
    heads: int = 0                  # transformer: attention heads and head width of its blocks
    dim_head: int = 0
    depth: int = 0                  # transformer: number of spatial blocks
    context_dim: Optional[int] = None  # transformer: text context width

    @property
    def block(self) -> str:
        return self.path.rsplit(".", 1)[0]


def blocks(layout: Iterable[SpatialLayer]) -> dict[str, list[SpatialLayer]]:
    grouped: dict[str, list[SpatialLayer]] = {}
    for layer in layout:
        grouped.setdefault(layer.block, []).append(layer)
    return grouped


def videoldm_slots(layout: Iterable[SpatialLayer], kernel_t: int = 3, positional: str = "absolute",
                   merge_strategy: str = "learned_with_images", alpha: float = 0.0,
                   text_context: bool = True, context_channels: int = 0) -> dict[str, dict]:
    """Slot configs of the Video LDM layout, keyed by the path of the spatial layer they follow
    (ResBlocks) or live in (transformers). `text_context`: temporal cross-attention to the text.
    `context_channels`: width of the context encoder's features (0: no context input)."""
    slots = {}
    for layer in layout:
        if layer.kind == "resblock":
            slots[layer.path] = dict(kind="resblock", channels=layer.channels, emb_channels=layer.emb_channels,
                                     kernel_t=kernel_t, merge_strategy=merge_strategy, alpha=alpha,
                                     context_channels=context_channels)
        elif layer.kind == "transformer":
            slots[layer.path] = dict(kind="transformer", channels=layer.channels, heads=layer.heads,
                                     dim_head=layer.dim_head, depth=layer.depth,
                                     context_dim=layer.context_dim if text_context else None,
                                     positional=positional, merge_strategy=merge_strategy, alpha=alpha,
                                     context_channels=context_channels)
    return slots


def motion_module_layer(block_layers: list[SpatialLayer]) -> Optional[SpatialLayer]:
    """The layer a motion module follows: the block's last transformer, else its first ResBlock."""
    transformers = [layer for layer in block_layers if layer.kind == "transformer"]
    if transformers:
        return transformers[-1]
    resblocks = [layer for layer in block_layers if layer.kind == "resblock"]
    return resblocks[0] if resblocks else None


def animatediff_slots(layout: Iterable[SpatialLayer], max_len: int = 32, heads: int = 8,
                      middle_block: bool = True) -> dict[str, dict]:
    """Slot configs of the AnimateDiff layout, keyed by block path ("input_blocks.1")."""
    slots = {}
    for block, block_layers in blocks(layout).items():
        if block == "middle_block" and not middle_block:
            continue
        layer = motion_module_layer(block_layers)
        if layer is not None:
            slots[block] = dict(kind="motion_module", channels=layer.channels, heads=heads, max_len=max_len)
    return slots
