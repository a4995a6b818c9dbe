"""Video Context: which frames of a video are given, for prediction (Video LDM §3.1.1)."""

from __future__ import annotations

import comfy.model_management
import torch
from comfy_api.latest import io
from typing_extensions import override

from ..videoldm_core.context import ContextError, VideoContext, context_positions, place_frames

VideoContextType = io.Custom("VIDEO_CONTEXT")


def given_latents(frames, images, vae) -> torch.Tensor:
    """The given frames as latents: a LATENT, or IMAGE frames encoded with the VAE."""
    if frames is not None and images is not None:
        raise ContextError("expected the given frames as a LATENT or as IMAGE frames with a VAE, found both.")
    if frames is not None:
        return frames["samples"]
    if images is None:
        raise ContextError("expected the given frames: connect a LATENT (frames) or IMAGE frames and a VAE.")
    if vae is None:
        raise ContextError("IMAGE frames need a VAE to become latents; connect the VAE of the model's family.")
    return vae.encode(images[:, :, :, :3])


class VideoContextNode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VideoLDMVideoContext",
            display_name="Video Context",
            category="Video LDM/sampling",
            description="Places given frames in a video of `length` frames for a prediction model: the context c_S "
                        "(given latents and their mask) for the Context Guider, and the LATENT to sample.",
            inputs=[
                io.Int.Input("length", default=16, min=2, max=4096,
                             tooltip="T: the number of frames of the video to sample."),
                io.String.Input("positions", default="start",
                                tooltip="Where the given frames go: 'start', 'end', or frame indices like '0, -1' "
                                        "(negative counts from the end). One index per given frame."),
                io.Latent.Input("frames", optional=True,
                                tooltip="The given frames as a LATENT (batch = frames). Its last frames continue a video."),
                io.Image.Input("images", optional=True, tooltip="Or the given frames as IMAGE frames, encoded with the VAE."),
                io.Vae.Input("vae", optional=True, tooltip="The VAE that encodes `images`."),
                io.Int.Input("use_last", default=0, min=0, max=4096,
                             tooltip="Use only the last N given frames (0: all), e.g. 2 to continue a video from its end."),
            ],
            outputs=[
                VideoContextType.Output(display_name="context", tooltip="For the Context Guider."),
                io.Latent.Output(display_name="latent", tooltip="T frames with the given ones in place, for the sampler."),
            ],
        )

    @classmethod
    @override
    def execute(cls, length, positions, frames=None, images=None, vae=None, use_last=0) -> io.NodeOutput:
        given = given_latents(frames, images, vae)
        if use_last:
            given = given[-use_last:]
        where = context_positions(positions, given.shape[0], length)
        latents = place_frames(given.to(comfy.model_management.intermediate_device(), torch.float32), where, length)
        context = VideoContext(latents, tuple(where))
        return io.NodeOutput(context, {"samples": latents.clone()})
