"""Video Context: which frames of a video are given, for prediction (Video LDM §3.1.1)."""

from __future__ import annotations

from comfy_api.v0_0_2 import io
from typing_extensions import override

from ..host.context import video_context
from ..videoldm_core.context import ContextError, context_positions, listed_positions
from .io_types import VideoContextType, checked_inputs, valid_numbers


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
                             tooltip="Use only the last N given frames (0: all), e.g. 2 to continue a video from its end.", advanced=True),
            ],
            outputs=[
                VideoContextType.Output(display_name="context", tooltip="For the Context Guider."),
                io.Latent.Output(display_name="latent", tooltip="T frames with the given ones in place, for the sampler."),
            ],
        )

    @classmethod
    def validate_inputs(cls, length=None, positions=None, use_last=None) -> bool | str:
        """Numbers finite and in range; positions that fit `length` (an index list is checked whole, 'start'
        and 'end' with use_last frames), before the nodes upstream make the frames. None: linked."""
        checked = valid_numbers(cls, length=length, use_last=use_last)
        if checked is not True or None in (length, positions):
            return checked
        try:
            listed = listed_positions(positions)
            # use_last fixes how many frames come; else an index list says it ('start' / 'end' wait for the frames)
            count = use_last or (len(listed) if listed is not None else 0)
            if count:
                context_positions(positions, count, length)
        except ContextError as e:
            return f"Video Context: {e}"
        return True

    @classmethod
    @override
    def execute(cls, length, positions, frames=None, images=None, vae=None, use_last=0) -> io.NodeOutput:
        checked_inputs(cls, locals())
        return io.NodeOutput(*video_context(length, positions, frames, images, vae, use_last))
