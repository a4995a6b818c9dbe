"""Layers built where and how they will run: `operations` (torch.nn, or the host's casting layers
such as comfy.ops.manual_cast) with a dtype and a device, as ComfyUI's own comfy/ldm modules are
built, so a 650M-parameter temporal stack is never first made in fp32 on the CPU."""

from __future__ import annotations

import functools

import torch
from torch import nn


class PlacedOperations:
    """`operations` whose layer classes (Linear, Conv3d, GroupNorm, ...) are created with `dtype=`
    and `device=`; anything else is passed through. Modules take it as their `operations=`."""

    def __init__(self, operations=nn, dtype: torch.dtype | None = None, device: torch.device | str | None = None):
        self.operations, self.dtype, self.device = operations, dtype, device

    def __getattr__(self, name: str):
        layer = getattr(self.operations, name)
        if isinstance(layer, type) and issubclass(layer, nn.Module):
            return functools.partial(layer, dtype=self.dtype, device=self.device)
        return layer


def placed(operations=nn, dtype: torch.dtype | None = None, device: torch.device | str | None = None):
    """`operations` as given when neither dtype nor device is asked for, else PlacedOperations."""
    if dtype is None and device is None:
        return operations
    return PlacedOperations(operations, dtype, device)


def zero_(module: nn.Module) -> nn.Module:
    """`module` with its weights zeroed, those it has: a host's layer may get its weights only when
    a state dict loads (ComfyUI's Linear under DynamicVRAM), and then the file's are the ones used."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module
