"""Moving Shapes: a seeded synthetic video whose motion is known exactly, for small training runs,
tests and the toy model family (videoldm_core/moving_shapes.py)."""

from __future__ import annotations

from comfy_api.v0_0_2 import io
from typing_extensions import override

from ..host.moving_shapes import check_moving_shapes, render_moving_shapes
from ..videoldm_core.errors import VideoLDMError
from .io_types import checked_inputs, valid_numbers


class MovingShapes(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VideoLDMMovingShapes",
            display_name="Moving Shapes (synthetic video)",
            category="Video LDM/training",
            description="Renders a synthetic video: 1-3 shapes that move, bounce, spin and change colour over a drifting "
                        "texture. The same seed at a quarter of the fps gives exactly every 4th frame, and scale 4 the "
                        "same scene at 4x the size, so keyframe, interpolation and upscaling stages have ground truth.",
            inputs=[
                io.Int.Input("seed", default=0, min=0, max=2 ** 31 - 1, control_after_generate=io.ControlAfterGenerate.fixed,
                             tooltip="Which scene (shapes, paths, colours). Kept after each run: queueing again renders "
                                     "the same video, so a Train Temporal Adapter fed by it does not train again."),
                io.Int.Input("frames", default=16, min=1, max=4096, tooltip="Number of frames."),
                io.Int.Input("width", default=64, min=8, max=2048, step=8, tooltip="Frame width in pixels (at scale 1)."),
                io.Int.Input("height", default=64, min=8, max=2048, step=8, tooltip="Frame height in pixels (at scale 1)."),
                io.Float.Input("fps", default=15.0, min=0.125, max=240.0, step=0.001,
                               tooltip="Frames per second: motion is defined in pixels per second."),
                io.Int.Input("scale", default=1, min=1, max=8,
                             tooltip="Render the same scene at this multiple of width and height."),
            ],
            outputs=[io.Image.Output(display_name="IMAGE", tooltip="The frames (batch = frames)."),
                     io.Float.Output(display_name="fps", tooltip="The frame rate, for Create Video."),
                     io.String.Output(display_name="caption",
                                      tooltip="Each shape with its colour and the direction it starts in, e.g. 'red "
                                              "square moving left' (shapes bounce off the edges, so most turn "
                                              "within a clip).")],
        )

    @classmethod
    def validate_inputs(cls, frames=None, width=None, height=None, fps=None, scale=None) -> bool | str:
        """A render beyond the pack's memory limit is refused before the prompt is queued."""
        numbers = dict(frames=frames, width=width, height=height, fps=fps, scale=scale)
        problem = valid_numbers(cls, **numbers)
        if problem is not True or None in numbers.values():   # a linked size: checked when it runs
            return problem
        try:
            check_moving_shapes(frames, width, height, scale)
        except VideoLDMError as e:
            return str(e)
        return True

    @classmethod
    @override
    def execute(cls, seed, frames, width, height, fps, scale) -> io.NodeOutput:
        checked_inputs(cls, locals())
        return io.NodeOutput(*render_moving_shapes(seed, frames, width, height, fps, scale))
