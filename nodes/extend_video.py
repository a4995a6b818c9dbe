"""Extend Video: long videos by autoregressive rollout with a prediction adapter (Video LDM §3.1.1)."""

from __future__ import annotations

import comfy.model_management as mm
import comfy.utils
import torch
from comfy_api.latest import io
from typing_extensions import override

from ..videoldm_core.context import VideoContext, place_frames
from ..videoldm_core.rollout import plan_rollout
from .context_guider import check_context_encoder, sample_with_context
from .sampler_inputs import sampler_and_sigmas, sampler_inputs


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
            ],
            outputs=[io.Latent.Output(tooltip="The whole video: the input frames followed by every segment's new frames.")],
        )

    @classmethod
    @override
    def execute(cls, model, positive, negative, video, segments, segment_length, context_frames, seed, steps, cfg,
                context_scale, sampler_name, scheduler) -> io.NodeOutput:
        frames = video["samples"].to(mm.intermediate_device(), torch.float32)
        plan = plan_rollout(frames.shape[0], segment_length, context_frames, segments)
        check_context_encoder(model, plan[-1].context_frames, "error")
        sampler, sigmas = sampler_and_sigmas(model, sampler_name, scheduler, steps)
        pbar = comfy.utils.ProgressBar(len(plan) * steps)
        # the whole video is allocated once: segments write into it (no growing list, no final copy)
        video_out = torch.empty(frames.shape[0] + sum(s.new_frames for s in plan), *frames.shape[1:])
        video_out[:frames.shape[0]] = frames
        end = frames.shape[0]
        for segment in plan:
            mm.throw_exception_if_processing_interrupted()
            given = video_out[end - segment.context_frames:end]
            context = VideoContext(place_frames(given, range(segment.context_frames), segment_length),
                                   tuple(range(segment.context_frames)))
            out = sample_with_context(model, positive, negative, context, sampler, sigmas, cfg, seed + segment.index,
                                      lambda: pbar.update(1), context_scale=context_scale)
            video_out[end:end + segment.new_frames] = out[segment.context_frames:]
            end += segment.new_frames
            del out, context
        return io.NodeOutput({"samples": video_out})
