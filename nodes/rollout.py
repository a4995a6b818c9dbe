"""Extend Video: long videos by autoregressive rollout with a prediction adapter (Video LDM §3.1.1)."""

from __future__ import annotations

from comfy_api.v0_0_2 import io
from typing_extensions import override

from ..host.rollout import extend_video
from ..videoldm_core.context import ContextError
from ..videoldm_core.rollout import check_segment_overlap
from .io_types import checked_inputs, custom_sampling_inputs, sampler_inputs, valid_numbers


class ExtendVideo(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VideoLDMExtendVideo",
            display_name="Extend Video",
            category="Video LDM/sampling",
            description="Extends a video segment by segment, each conditioned on the last frames of what exists "
                        "(Video LDM's long-video rollout). Start from one frame of the image model: the first segment "
                        "then uses 1 context frame, the rest use `context_frames`. Memory stays that of one segment.",
            search_aliases=["rollout", "long video", "prediction model"],
            inputs=[
                io.Model.Input("model", tooltip="A model with a prediction temporal adapter applied (one with a context encoder)."),
                io.Conditioning.Input("positive", tooltip="The prompt, for every segment."),
                io.Conditioning.Input("negative", tooltip="The negative prompt."),
                io.Latent.Input("video", tooltip="The frames to extend (batch = frames); at least 1."),
                io.Int.Input("segments", default=4, min=1, max=10000, tooltip="N: how many segments to append."),
                io.Int.Input("segment_length", default=16, min=2, max=4096,
                             tooltip="T: frames sampled per segment, the context frames included."),
                io.Int.Input("context_frames", default=2, min=1, max=4095,
                             tooltip="S: frames each segment takes from the end of the video (the segment overlap); "
                                     "must be below segment_length. The paper uses 2 (they encode motion)."),
                *sampler_inputs("segment"),
                io.Float.Input("context_scale", default=1.0, min=0.0, max=20.0, step=0.05,
                               tooltip="Context guidance s (1: no extra branch)."),
                *custom_sampling_inputs("segment"),
            ],
            outputs=[io.Latent.Output(tooltip="The whole video: the input frames followed by every segment's new frames.")],
        )

    @classmethod
    def validate_inputs(cls, cfg=None, context_scale=None, segment_length=None, context_frames=None) -> bool | str:
        """Numbers finite and in range; the segment overlap below the segment (None: linked, checked when
        it runs), before the nodes upstream sample anything."""
        checked = valid_numbers(cls, cfg=cfg, context_scale=context_scale, segment_length=segment_length,
                                context_frames=context_frames)
        if checked is True and None not in (segment_length, context_frames):
            try:
                check_segment_overlap(segment_length, context_frames)
            except ContextError as e:
                return str(e)
        return checked

    @classmethod
    @override
    def execute(cls, model, positive, negative, video, segments, segment_length, context_frames, seed, steps, cfg,
                context_scale, sampler_name, scheduler, sampler=None, sigmas=None, noise=None) -> io.NodeOutput:
        checked_inputs(cls, locals())
        return io.NodeOutput(extend_video(model, positive, negative, video, segments, segment_length, context_frames,
                                          seed, steps, cfg, sampler_name, scheduler, context_scale, sampler, sigmas, noise))
