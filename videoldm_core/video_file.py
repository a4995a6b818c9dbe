"""A video file written frame by frame as frames are finished, complete or not at all.

A minutes-long render never holds its frames: each finished block of frames is converted to 8 bits
and handed to the H.264 encoder, which keeps only its lookahead. The file is written under a
temporary name beside its final one and renamed when the last frame is in, so a render that is
interrupted (the temporary file is removed) or killed (a `.part` file is left, in ComfyUI's temp
folder, which ComfyUI empties at start) never leaves a corrupt file under the final name.

The conversion and the stream are the ones core ComfyUI's CreateVideo → Save Video uses for an
IMAGE (8-bit RGB as `(x · 255).clamp(0, 255)` truncated, yuv420p H.264 at the frame rate rounded to
1/1000, no audio), so the encoder receives the same frames as it does from the in-memory path.
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import torch

from .errors import VideoLDMError

PART_SUFFIX = ".part"


class VideoFileError(VideoLDMError):
    """Frames the H.264 writer cannot take."""


def frame_rate(fps: float) -> Fraction:
    """The stream's rate: fps to 1/1000, as core's video writer rounds it."""
    return Fraction(round(fps * 1000), 1000)


def to_8bit(frames: torch.Tensor) -> torch.Tensor:
    """Floats in [0, 1] → uint8, exactly as core's writer converts an IMAGE's frames."""
    return (frames * 255).clamp(0, 255).byte()


MAX_SIDE = 16384   # libx264 refuses wider or taller frames (with an opaque avcodec_open2 error)


def check_frame_size(width: int, height: int):
    """Refuses a frame size H.264 cannot take; callers check before decoding anything."""
    if width % 2 or height % 2:
        raise VideoFileError(f"H.264 (yuv420p) needs an even width and height, the frames are {width}x{height}.")
    if not (0 < width <= MAX_SIDE and 0 < height <= MAX_SIDE):
        raise VideoFileError(f"H.264 (libx264) takes frames of 2 to {MAX_SIDE} pixels a side, the frames are "
                             f"{width}x{height}.")


class VideoFileWriter:
    """`with VideoFileWriter(path, width, height, fps) as video: video.write(frames)` writes an mp4 at
    `path`, frame blocks (n, H, W, 3) in [0, 1] in order; the file appears at `path` only when the
    block ends without an error."""

    def __init__(self, path: str | os.PathLike, width: int, height: int, fps: float):
        check_frame_size(width, height)
        self.path = Path(path)
        self.part = self.path.with_name(self.path.name + PART_SUFFIX)
        self.width, self.height, self.rate = width, height, frame_rate(fps)
        self.frames_written = 0
        self._container = self._stream = None

    def __enter__(self) -> "VideoFileWriter":
        import av

        self._container = av.open(str(self.part), mode="w", format="mp4",
                                  options={"movflags": "use_metadata_tags+faststart"})
        try:
            self._stream = self._container.add_stream("h264", rate=self.rate)
            self._stream.width, self._stream.height, self._stream.pix_fmt = self.width, self.height, "yuv420p"
        except BaseException:
            self._container.close()
            self.part.unlink(missing_ok=True)
            raise
        return self

    def write(self, frames: torch.Tensor):
        """Encode a block of finished frames (n, H, W, 3), floats in [0, 1], one at a time (no 8-bit or
        float copy of the whole block)."""
        import av

        if frames.ndim != 4 or tuple(frames.shape[1:]) != (self.height, self.width, 3):
            raise VideoFileError(f"expected frames of shape (n, {self.height}, {self.width}, 3), "
                                 f"found {tuple(frames.shape)}.")
        for frame in frames:
            picture = av.VideoFrame.from_ndarray(to_8bit(frame).cpu().numpy(), format="rgb24").reformat(format="yuv420p")
            self._container.mux(self._stream.encode(picture))
            self.frames_written += 1

    def __exit__(self, kind, error, traceback):
        try:
            try:
                if kind is None:
                    self._container.mux(self._stream.encode(None))   # flush the encoder's lookahead
            finally:
                self._container.close()   # even when the flush fails (a full disk): no file left open
        except BaseException:
            self.part.unlink(missing_ok=True)
            if kind is None:
                raise
            return False   # the error that ended the block is the one to report, not the writer's
        if kind is None:
            os.replace(self.part, self.path)
        else:
            self.part.unlink(missing_ok=True)
        return False
