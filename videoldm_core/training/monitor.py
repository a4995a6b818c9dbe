"""TensorBoard scalars of a training run, beside loss.csv (which stays the record): every value of
a step's row (each phase's losses and gradient norm, the learning rate), the throughput in clips
per second of the global batch, and for streamed data the share of the step spent waiting for
clips (time in the data pipeline over time in the pipeline and the step). Written by rank 0 to
`<output>/tensorboard`; `tensorboard --logdir <output>` shows them. Beside them, every N steps, the
validation video (`video`; sampled by host/training_validation.py)."""

from __future__ import annotations

import io
from pathlib import Path

import torch
from einops import rearrange


class TensorBoardLog:
    def __init__(self, folder: str | Path):
        from torch.utils.tensorboard import SummaryWriter   # needs the training extra's tensorboard

        self.writer = SummaryWriter(str(folder))
        self._waited = 0.0

    def step(self, row: dict, global_batch: int, waited_in_all: float | None = None) -> dict:
        """Writes the step's scalars; returns them by tag."""
        step, seconds = int(row["step"]), float(row["seconds"])
        scalars = {(k if "/" in k else f"train/{k}"): float(v) for k, v in row.items() if k not in ("step", "seconds")}
        waited = 0.0
        if waited_in_all is not None:
            waited, self._waited = waited_in_all - self._waited, waited_in_all
            scalars["data/wait_share"] = waited / (waited + seconds) if waited + seconds > 0 else 0.0
        scalars["train/clips_per_s"] = global_batch / (waited + seconds) if waited + seconds > 0 else 0.0
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()
        return scalars

    def video(self, tag: str, videos: torch.Tensor, step: int, fps: float) -> bytes:
        """Videos (N, T, H, W, 3) in [0, 1] side by side in one animated GIF, written as the image
        summary SummaryWriter.add_video writes (TensorBoard's Images tab plays it); returns the GIF.
        Encoded with Pillow: add_video needs moviepy < 2 (it imports moviepy.editor, which moviepy 2
        removed), which the training extra does not install."""
        from PIL import Image
        from tensorboard.compat.proto.summary_pb2 import Summary

        frames = rearrange((videos.clamp(0, 1) * 255).round().to(torch.uint8), "n t h w c -> t h (n w) c")
        images = [Image.fromarray(frame.numpy()) for frame in frames]
        gif = io.BytesIO()
        # a frame equal to the one before is stored once, shown for both durations
        images[0].save(gif, format="GIF", save_all=True, append_images=images[1:], duration=frame_ms(fps), loop=0)
        height, width = frames.shape[1:3]
        image = Summary.Image(height=height, width=width, colorspace=3, encoded_image_string=gif.getvalue())
        self.writer.file_writer.add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)
        self.writer.flush()
        return gif.getvalue()

    def close(self):
        self.writer.close()


def frame_ms(fps: float) -> int:
    """A GIF frame's duration in ms: GIF stores whole centiseconds; at least 2 (what browsers play as given)."""
    return 10 * max(2, round(100 / fps))
