"""Interpolate Keyframes: T keyframes → 4T − 3 frames in latent space (Video LDM §3.1.1)."""

from __future__ import annotations

import comfy.model_management as mm
import comfy.utils
import torch
from comfy_api.latest import io
from typing_extensions import override

from ..videoldm_core.context import VideoContext, place_frames
from ..videoldm_core.interpolation import (FACTOR, REGIMES, InterpolationError, augment_keyframes,
                                           check_augmentation_level, check_keyframes, dense_length, interpolation_labels, keyframe_positions, keyframe_windows,
                                           regime_label)
from .context_guider import sample_with_context
from .sampler_inputs import sampler_and_sigmas, sampler_inputs
from .temporal_patch import applied_adapters


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


class InterpolateKeyframes(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VideoLDMInterpolateKeyframes",
            display_name="Interpolate Keyframes",
            category="Video LDM/sampling",
            description="Samples the three frames between each pair of keyframes with an interpolation adapter: "
                        "T keyframes → 4T − 3 frames at 4x the frame rate. Chain twice for 16T − 15.",
            inputs=[
                io.Model.Input("model", tooltip="A model with an interpolation adapter applied (context encoder, trained "
                                                "on keyframe masks)."),
                io.Conditioning.Input("positive", tooltip="The prompt."),
                io.Conditioning.Input("negative", tooltip="The negative prompt."),
                io.Latent.Input("keyframes", tooltip="T >= 2 keyframes (batch = frames), all of one size."),
                io.Combo.Input("regime", options=list(REGIMES), default="T→4T",
                               tooltip="Which step of the cascade: T→4T (first pass, e.g. 1.875→7.5 fps) or 4T→16T "
                                       "(second pass, 7.5→30 fps). Needs an adapter with the regime label."),
                io.Boolean.Input("keep_keyframes", default=True,
                                 tooltip="Return the keyframes unchanged at positions 0, 4, 8, ..."),
                io.Float.Input("augmentation", default=0.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Conditioning augmentation: noise of this level on the keyframes the model "
                                       "sees (the level is an input of the model too). Use the level it was trained with."),
                io.Int.Input("window_keyframes", default=5, min=2, max=4096,
                             tooltip="Keyframes per window; windows share one keyframe, memory is that of one window "
                                     "(4·window − 3 frames)."),
                *sampler_inputs("window"),
                io.Float.Input("fps", default=1.875, min=0.001, max=1000.0, step=0.001,
                               tooltip="Frame rate of the keyframes; the output rate is 4x this."),
            ],
            outputs=[io.Latent.Output(display_name="latent", tooltip="4T − 3 frames."),
                     io.Float.Output(display_name="fps", tooltip="The new frame rate (4x), for CreateVideo.")],
        )

    @classmethod
    @override
    def execute(cls, model, positive, negative, keyframes, regime, keep_keyframes, augmentation, window_keyframes, seed,
                steps, cfg, sampler_name, scheduler, fps) -> io.NodeOutput:
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
        return io.NodeOutput({"samples": out}, fps * FACTOR)
