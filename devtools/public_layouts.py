"""Temporal modules in the exact public key layouts, random weights at any width: AnimateDiff's
original motion-module layout and the variants its derivatives ship (AnimateLCM without positional
tables, HotshotXL's renamed keys). Shared by the unit and host tiers and the demo models."""

from __future__ import annotations

import re

import torch


def animatediff_layout_state_dict(widths, max_len=32, mid_block=True, seed=0, std=0.05, slot_class=None):
    """A random motion module in AnimateDiff's original key layout for a UNet with these level
    widths and two ResBlocks per level (`down_blocks.i.motion_modules.j.temporal_transformer.*`)."""
    if slot_class is None:
        from videoldm_core.slots import MotionModuleSlot as slot_class
    positions = [(f"down_blocks.{i}.motion_modules.{j}", c) for i, c in enumerate(widths) for j in range(2)]
    positions += [(f"up_blocks.{len(widths) - 1 - i}.motion_modules.{j}", c) for i, c in enumerate(widths) for j in range(3)]
    if mid_block:
        positions.append(("mid_block.motion_modules.0", widths[-1]))
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for prefix, channels in positions:
        for key, value in slot_class(channels, 8, max_len).state_dict().items():
            if not key.endswith("pos_encoder.pe"):
                value = torch.randn(value.shape, generator=generator) * std + (1.0 if key.endswith(("norm.weight", "norms.0.weight", "norms.1.weight", "ff_norm.weight")) else 0.0)
            out[f"{prefix}.{key}"] = value
    return out


def animatediff_state_dict(widths, pe_len=32, mid=False, hotshot=False, with_pe=True, seed=0, std=0.05):
    """A motion module as each public variant ships it: AnimateDiff v1/v2/v3/SDXL (`pe_len`, `mid`),
    AnimateLCM (`with_pe=False`: no tables), HotshotXL (`hotshot`: `temporal_attentions.N.` and
    `pos_encoder.positional_encoding`)."""
    out = {}
    for name, value in animatediff_layout_state_dict(widths, pe_len, mid, seed=seed, std=std).items():
        if name.endswith("pos_encoder.pe") and not with_pe:
            continue
        if hotshot:
            name = re.sub(r"\.motion_modules\.(\d+)\.temporal_transformer\.", r".temporal_attentions.\1.", name)
            name = name.replace("pos_encoder.pe", "pos_encoder.positional_encoding")
        out[name] = value
    return out


# the public variants at tiny SD1.5 / SDXL widths (32, 64, ...): keyword arguments of animatediff_state_dict
SD15_WIDTHS, SDXL_WIDTHS = [32, 64, 64, 64], [32, 64, 64]
VARIANTS = {
    "v1": dict(widths=SD15_WIDTHS, pe_len=24),
    "v2": dict(widths=SD15_WIDTHS, mid=True),
    "v3": dict(widths=SD15_WIDTHS),
    "sdxl": dict(widths=SDXL_WIDTHS),
    "animatelcm": dict(widths=SD15_WIDTHS, mid=True, with_pe=False),
    "hotshotxl": dict(widths=SDXL_WIDTHS, pe_len=24, hotshot=True),   # Hotshot-XL PositionalEncoding max_length=24
}
