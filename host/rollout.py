"""Long videos by autoregressive rollout with a prediction adapter (Video LDM §3.1.1): the Extend
Video node's sampling loop. One segment is on the device at a time."""

from __future__ import annotations

import comfy.model_management as mm
import torch

from ..videoldm_core.context import VideoContext, checked_video_latent, place_frames
from ..videoldm_core.limits import check_output_size, tensor_bytes
from ..videoldm_core.rollout import plan_rollout
from .guidance import check_context_encoder, latent_channels, sample_with_context
from .sampling import RunNoise, SamplingProgress, sampler_and_sigmas


def extend_video(model, positive, negative, video: dict, segments: int, segment_length: int, context_frames: int,
                 seed: int, steps: int, cfg: float, sampler_name: str, scheduler: str, context_scale: float = 1.0,
                 sampler=None, sigmas=None, noise=None) -> dict:
    """The LATENT `video` followed by `segments` new segments, each conditioned on the last frames.
    `sampler`, `sigmas`, `noise`: core SAMPLER / SIGMAS / NOISE values replacing the node's own."""
    frames = checked_video_latent(video["samples"], "Extend Video", "video", latent_channels(model))
    frames = frames.to(mm.intermediate_device(), torch.float32)
    plan = plan_rollout(frames.shape[0], segment_length, context_frames, segments)
    total = frames.shape[0] + sum(s.new_frames for s in plan)
    # the output, and with a NOISE input its one draw for every segment, are checked before either exists
    implied = tensor_bytes((total, *frames.shape[1:])) + (tensor_bytes((segment_length * len(plan), *frames.shape[1:]))
                                                          if noise is not None else 0)
    check_output_size("Extend Video", implied, dict(video_frames=frames.shape[0], segments=segments,
                                                    segment_length=segment_length, context_frames=context_frames),
                      what=f"a latent of {total} frames of {tuple(frames.shape[1:])}")
    for given in sorted({segment.context_frames for segment in plan}):   # the first segment may see fewer
        check_context_encoder(model, given, "error")
    sampler, sigmas = sampler_and_sigmas(model, sampler_name, scheduler, steps, sampler, sigmas)
    run_noise = RunNoise(seed, noise, [segment_length] * len(plan), frames.shape[1:])
    progress = SamplingProgress(model, len(plan), len(sigmas) - 1, node="Extend Video", run="segment")
    # the whole video is allocated once, within the limit: segments write into it (no growing list, no final copy)
    video_out = torch.empty(total, *frames.shape[1:])
    video_out[:frames.shape[0]] = frames
    end = frames.shape[0]
    for segment in plan:
        mm.throw_exception_if_processing_interrupted()
        given = video_out[end - segment.context_frames:end]
        context = VideoContext(place_frames(given, range(segment.context_frames), segment_length),
                               tuple(range(segment.context_frames)))
        out = sample_with_context(model, positive, negative, context, sampler, sigmas, cfg,
                                  run_noise(segment.index, context.latents), run_noise.run_seed(segment.index),
                                  progress.of_run(segment.index, context.first_new_frame), context_scale=context_scale,
                                  name=progress.name_of(segment.index))
        video_out[end:end + segment.new_frames] = out[segment.context_frames:]
        end += segment.new_frames
        del out, context
    return {"samples": video_out}
