"""Keyframe interpolation T → 4T − 3 in latent space (Video LDM §3.1.1): the Interpolate Keyframes
node's sampling loop, in windows of keyframes that share one keyframe."""

from __future__ import annotations

import comfy.model_management as mm
import comfy.utils
import torch

from ..videoldm_core.context import VideoContext, place_frames
from ..videoldm_core.interpolation import (FACTOR, REGIMES, InterpolationError, augment_keyframes,
                                           check_augmentation_level, check_keyframes, dense_length, interpolation_labels,
                                           keyframe_positions, keyframe_windows, regime_label)
from .guidance import sample_with_context, sampler_and_sigmas
from .temporal_adapter import applied_adapters


def check_interpolation_model(model, regime: int):
    """An applied adapter must read context frames; a regime other than the default needs the label embedding."""
    adapters = applied_adapters(model)
    readers = [a for a in adapters if a.adapter.spec.has_context_encoder]
    names = ", ".join(f"'{a.name}'" for a in adapters) or "none"
    if not readers:
        raise InterpolationError(f"expected a model with an interpolation adapter applied (a temporal adapter with a "
                                 f"context encoder, trained on keyframe masks), found adapters: {names}.")
    if regime != 0 and not any(a.adapter.spec.has_interpolation_embedding for a in readers):
        raise InterpolationError(f"the regime {list(REGIMES)[regime]!r} needs an adapter with the regime label embedding; "
                                 f"{names} have none, so only {list(REGIMES)[0]!r} can be used.")


def interpolate_keyframes(model, positive, negative, keyframes: dict, regime: str, keep_keyframes: bool,
                          augmentation: float, window_keyframes: int, seed: int, steps: int, cfg: float,
                          sampler_name: str, scheduler: str, fps: float) -> tuple[dict, float]:
    """(LATENT of 4T − 3 frames, 4·fps)."""
    frames = check_keyframes(keyframes["samples"])
    label = regime_label(regime)
    check_interpolation_model(model, label)
    check_augmentation_level(augmentation)
    frames = frames.to(mm.intermediate_device(), torch.float32)
    windows = keyframe_windows(frames.shape[0], window_keyframes)
    sampler, sigmas = sampler_and_sigmas(model, sampler_name, scheduler, steps)
    pbar = comfy.utils.ProgressBar(len(windows) * steps)
    out = torch.zeros(dense_length(frames.shape[0]), *frames.shape[1:])
    for i, window in enumerate(windows):
        mm.throw_exception_if_processing_interrupted()
        length = dense_length(window.count)
        positions = keyframe_positions(window.count)
        context = VideoContext(place_frames(frames[window.first:window.first + window.count], positions, length),
                               tuple(positions))
        generator = torch.Generator().manual_seed(seed + i)
        dense = sample_with_context(model, positive, negative, context, sampler, sigmas, cfg, seed + i,
                                    lambda: pbar.update(1), labels=interpolation_labels(length, label, augmentation),
                                    augment=lambda z, g=generator: augment_keyframes(z, augmentation, g),
                                    keep=keep_keyframes).to(out)
        skip = 0 if i == 0 else 1  # the shared keyframe comes from the previous window
        out[window.dense_start + skip:window.dense_start + length] = dense[skip:]
    return {"samples": out}, fps * FACTOR
