"""Keyframe interpolation T → 4T − 3 in latent space (Video LDM §3.1.1): the Interpolate Keyframes
node's sampling loop, in windows of keyframes that share one keyframe."""

from __future__ import annotations

import logging

import comfy.model_management as mm
import torch

from ..videoldm_core.context import VideoContext, checked_video_latent, place_frames
from ..videoldm_core.interpolation import (FACTOR, REGIMES, InterpolationError, augment_keyframes,
                                           check_augmentation_level, check_keyframes, dense_length, interpolation_labels,
                                           keyframe_positions, keyframe_windows, regime_label)
from ..videoldm_core.limits import check_output_size, tensor_bytes
from .guidance import latent_channels, sample_with_context
from .sampling import RunNoise, SamplingProgress, sampler_and_sigmas
from .temporal_adapter import applied_adapters

log = logging.getLogger("videoldm")


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
    for a in readers:   # before loading anything: the embedding would refuse the label at the first model call
        labels = a.adapter.spec.interpolation["regimes"] if a.adapter.spec.has_interpolation_embedding else None
        if labels is not None and regime >= labels:
            raise InterpolationError(f"adapter '{a.name}' was trained with {labels} regime label(s) "
                                     f"{list(REGIMES)[:labels]}, not {list(REGIMES)[regime]!r}.")


ADAPTERS_OWN = -1.0   # the augmentation input's "the adapter's own"


def augmentation_problem(augmentation: float | None) -> str | None:
    """What is wrong with the augmentation input (-1 or a level in [0, 1]; the widget's range also
    admits the values between), or None."""
    if augmentation is None or augmentation == ADAPTERS_OWN or 0.0 <= augmentation <= 1.0:
        return None
    return f"augmentation: expected -1 (the adapter's own level) or a level in [0, 1], found {augmentation}."


def own_augmentation(model) -> float:
    """The middle of the conditioning-augmentation levels the applied interpolation adapter was
    trained with (the level it saw most typically); 0 for an adapter without the level embedding."""
    ranges = [a.adapter.spec.augmentation_range for a in applied_adapters(model) if a.adapter.spec.has_interpolation_embedding]
    return (ranges[0][0] + ranges[0][1]) / 2 if ranges else 0.0


def interpolate_keyframes(model, positive, negative, keyframes: dict, regime: str, keep_keyframes: bool,
                          augmentation: float, window_keyframes: int, seed: int, steps: int, cfg: float,
                          sampler_name: str, scheduler: str, fps: float, sampler=None, sigmas=None,
                          noise=None) -> tuple[dict, float]:
    """(LATENT of 4T − 3 frames, 4·fps). `sampler`, `sigmas`, `noise`: core SAMPLER / SIGMAS / NOISE
    values replacing the node's own."""
    if (problem := augmentation_problem(augmentation)) is not None:
        raise InterpolationError(problem)
    frames = checked_video_latent(check_keyframes(keyframes["samples"]), "Interpolate Keyframes", "keyframes",
                                  latent_channels(model))
    label = regime_label(regime)
    check_interpolation_model(model, label)
    if augmentation == ADAPTERS_OWN:
        augmentation = own_augmentation(model)
    check_augmentation_level(augmentation)
    for a in applied_adapters(model):
        low, high = a.adapter.spec.augmentation_range if a.adapter.spec.has_interpolation_embedding else (0.0, 0.0)
        if a.adapter.spec.has_context_encoder and not low <= augmentation <= high:
            log.warning("Video LDM: adapter '%s' was trained with augmentation levels in [%g, %g], given %g.", a.name,
                        low, high, augmentation)
    frames = frames.to(mm.intermediate_device(), torch.float32)
    windows = keyframe_windows(frames.shape[0], window_keyframes)
    total = dense_length(frames.shape[0])
    # the output, and with a NOISE input its one draw for every window, are checked before either exists
    implied = tensor_bytes((total, *frames.shape[1:])) + (
        tensor_bytes((sum(dense_length(w.count) for w in windows), *frames.shape[1:])) if noise is not None else 0)
    check_output_size("Interpolate Keyframes", implied, dict(keyframes=frames.shape[0], window_keyframes=window_keyframes),
                      what=f"a latent of {total} frames of {tuple(frames.shape[1:])}")
    sampler, sigmas = sampler_and_sigmas(model, sampler_name, scheduler, steps, sampler, sigmas)
    run_noise = RunNoise(seed, noise, [dense_length(w.count) for w in windows], frames.shape[1:])
    progress = SamplingProgress(model, len(windows), len(sigmas) - 1, node="Interpolate Keyframes", run="window")
    out = torch.zeros(total, *frames.shape[1:])
    for i, window in enumerate(windows):
        mm.throw_exception_if_processing_interrupted()
        length = dense_length(window.count)
        positions = keyframe_positions(window.count)
        context = VideoContext(place_frames(frames[window.first:window.first + window.count], positions, length),
                               tuple(positions))
        generator = torch.Generator().manual_seed(run_noise.augmentation_seed(i))   # not the noise's numbers
        dense = sample_with_context(model, positive, negative, context, sampler, sigmas, cfg,
                                    run_noise(i, context.latents), run_noise.run_seed(i),
                                    progress.of_run(i, context.first_new_frame),
                                    labels=interpolation_labels(length, label, augmentation),
                                    augment=lambda z, g=generator: augment_keyframes(z, augmentation, g),
                                    keep=keep_keyframes, name=progress.name_of(i)).to(out)
        skip = 0 if i == 0 else 1  # the shared keyframe comes from the previous window
        out[window.dense_start + skip:window.dense_start + length] = dense[skip:]
    return {"samples": out}, fps * FACTOR
