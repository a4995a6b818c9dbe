"""Interpolate Keyframes: T keyframes → 4T − 3 frames in latent space (Video LDM §3.1.1)."""

from __future__ import annotations

from comfy_api.v0_0_2 import io
from typing_extensions import override

from ..host.interpolation import ADAPTERS_OWN, augmentation_problem, interpolate_keyframes
from ..videoldm_core.interpolation import REGIMES, check_regime_name
from .io_types import checked_inputs, custom_sampling_inputs, sampler_inputs, valid_numbers


class InterpolateKeyframes(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VideoLDMInterpolateKeyframes",
            display_name="Interpolate Keyframes",
            category="Video LDM/sampling",
            description="Samples the three frames between each pair of keyframes with an interpolation adapter: "
                        "T keyframes → 4T − 3 frames at 4x the frame rate. Chain twice for 16T − 15.",
            search_aliases=["frame interpolation", "temporal interpolation", "fps x4"],
            inputs=[
                io.Model.Input("model", tooltip="A model with an interpolation adapter applied (context encoder, trained "
                                                "on keyframe masks)."),
                io.Conditioning.Input("positive", tooltip="The prompt."),
                io.Conditioning.Input("negative", tooltip="The negative prompt."),
                io.Latent.Input("keyframes", tooltip="T >= 2 keyframes (batch = frames), all of one size."),
                io.Combo.Input("regime", options=list(REGIMES), default="T-to-4T",
                               tooltip="Which step of the cascade: T-to-4T (first pass, e.g. 1.875 to 7.5 fps) or 4T-to-16T "
                                       "(second pass, 7.5 to 30 fps). 4T-to-16T needs an adapter with the regime label."),
                io.Boolean.Input("keep_keyframes", default=True,
                                 tooltip="Return the keyframes unchanged at positions 0, 4, 8, ...", advanced=True),
                io.Float.Input("augmentation", default=ADAPTERS_OWN, min=ADAPTERS_OWN, max=1.0, step=0.01,
                               tooltip="Conditioning augmentation: noise of this level on the keyframes the model "
                                       "sees (the level is an input of the model too). -1: the adapter's own, the "
                                       "middle of the levels it was trained with (0.125 for [0, 0.25])."),
                io.Int.Input("window_keyframes", default=5, min=2, max=4096,
                             tooltip="Keyframes per window; windows share one keyframe, memory is that of one window "
                                     "(4·window − 3 frames).", advanced=True),
                *sampler_inputs("window"),
                io.Float.Input("fps", default=1.875, min=0.001, max=1000.0, step=0.001,
                               tooltip="Frame rate of the keyframes; the output rate is 4x this."),
                *custom_sampling_inputs("window"),
            ],
            outputs=[io.Latent.Output(display_name="latent", tooltip="4T − 3 frames."),
                     io.Float.Output(display_name="fps", tooltip="The new frame rate (4x), for CreateVideo.")],
        )

    @classmethod
    def validate_inputs(cls, regime=None, augmentation=None, cfg=None, fps=None) -> bool | str:
        """Saved graphs and API prompts from before the names were plain ASCII ("T→4T") still run (a
        linked regime, None here, is checked when it runs); the numbers are checked whole (finite, in
        range), since naming them here skips ComfyUI's check."""
        regime_ok = True if regime is None else check_regime_name(regime)
        numbers_ok = valid_numbers(cls, augmentation=augmentation, cfg=cfg, fps=fps)
        if regime_ok is not True or numbers_ok is not True:
            return numbers_ok if regime_ok is True else regime_ok
        return augmentation_problem(augmentation) or True

    @classmethod
    @override
    def execute(cls, model, positive, negative, keyframes, regime, keep_keyframes, augmentation, window_keyframes, seed,
                steps, cfg, sampler_name, scheduler, fps, sampler=None, sigmas=None, noise=None) -> io.NodeOutput:
        checked_inputs(cls, locals())
        return io.NodeOutput(*interpolate_keyframes(model, positive, negative, keyframes, regime, keep_keyframes,
                                                    augmentation, window_keyframes, seed, steps, cfg, sampler_name,
                                                    scheduler, fps, sampler, sigmas, noise))
