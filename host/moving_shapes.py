"""Moving Shapes in ComfyUI: the synthetic clip (videoldm_core/moving_shapes.py) as IMAGE frames,
its memory checked before anything is drawn, a progress step and an interrupt check per frame."""

from __future__ import annotations

import comfy.model_management as mm
import comfy.utils
import torch

from ..videoldm_core.limits import check_output_size, tensor_bytes
from ..videoldm_core.moving_shapes import clip_bytes, moving_shapes_clip


def check_moving_shapes(frames: int, width: int, height: int, scale: int) -> int:
    """The bytes a render implies (the clip and its IMAGE copy), refused above the pack's limit."""
    implied = clip_bytes(frames, height, width, scale) + tensor_bytes((frames, height * scale, width * scale, 3))
    return check_output_size("Moving Shapes", implied, dict(frames=frames, width=width, height=height, scale=scale),
                             what=f"{frames} frames of {width * scale}x{height * scale}")


def render_moving_shapes(seed: int, frames: int, width: int, height: int, fps: float,
                         scale: int) -> tuple[torch.Tensor, float, str]:
    """(IMAGE frames (T, H, W, 3) in [0, 1], fps, caption)."""
    check_moving_shapes(frames, width, height, scale)
    pbar = comfy.utils.ProgressBar(frames)

    def on_frame(i: int):
        pbar.update_absolute(i + 1, frames)
        mm.throw_exception_if_processing_interrupted()

    clip = moving_shapes_clip(seed, frames, height, width, fps=fps, scale=scale, on_frame=on_frame)
    return clip.frames.add_(1).div_(2).movedim(1, -1).contiguous(), fps, clip.caption
