"""Context Guider: sampling with given frames (c_S) and context guidance (Video LDM §3.1.1)."""

from __future__ import annotations

from comfy_api.v0_0_2 import io
from typing_extensions import override

from ..host.guidance import ON_MISSING, context_guider
from .io_types import CFG_WHY, VideoContextType, checked_inputs, valid_numbers


class ContextGuiderNode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VideoLDMContextGuider",
            display_name="Context Guider",
            category="Video LDM/sampling",
            description="A GUIDER for SamplerCustomAdvanced that samples a video from given context frames (Video LDM "
                        "prediction) with text CFG and context guidance: f(z) + s·(f(z; c_S) − f(z)).",
            inputs=[
                io.Model.Input("model", tooltip="A model with a prediction temporal adapter applied (one with a context encoder)."),
                io.Conditioning.Input("positive", tooltip="The prompt."),
                io.Conditioning.Input("negative", tooltip="The negative prompt (it also sees the context frames)."),
                VideoContextType.Input("context", tooltip="From Video Context: which frames are given."),
                io.Float.Input("cfg", default=7.5, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="Text classifier-free guidance scale; 1 skips the negative branch. " + CFG_WHY[7.5]),
                io.Float.Input("context_scale", default=1.0, min=0.0, max=20.0, step=0.05,
                               tooltip="Context guidance s: 1 is plain conditioning on the context; above 1 also runs a "
                                       "context-dropped branch and pushes away from it (the paper uses s >= 1)."),
                io.Boolean.Input("keep_given_frames", default=True,
                                 tooltip="Return the given frames unchanged (they are masked out of denoising).", advanced=True),
                io.Combo.Input("if_no_context_encoder", options=list(ON_MISSING), default="error",
                               tooltip="When no applied adapter reads context frames: stop with an error, or ignore the "
                                       "context and guide with text CFG only.", advanced=True),
            ],
            outputs=[io.Guider.Output(tooltip="For SamplerCustomAdvanced; the latent must have the context's frame count.")],
        )

    @classmethod
    def validate_inputs(cls, cfg=None, context_scale=None) -> bool | str:
        return valid_numbers(cls, cfg=cfg, context_scale=context_scale)

    @classmethod
    @override
    def execute(cls, model, positive, negative, context, cfg, context_scale, keep_given_frames,
                if_no_context_encoder) -> io.NodeOutput:
        checked_inputs(cls, locals())
        return io.NodeOutput(context_guider(model, positive, negative, context, cfg, context_scale, keep_given_frames,
                                            if_no_context_encoder))
