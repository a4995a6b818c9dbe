"""Synthetic training data on disk: moving-shapes clips (videoldm_core.moving_shapes) written as mp4
files or frame folders with captions, the layout the pack's data folders read. For tests, the toy
model family and benchmarks; nothing the pack runs needs it."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from videoldm_core.moving_shapes import moving_shapes_clip
from videoldm_core.training.objective import TrainingError


def scene_seed(seed: int, index: int) -> int:
    """The seed of clip `index` in a dataset written with `seed`; datasets with nearby seeds share no clips."""
    return seed * 1_000_003 + index


def to_uint8(frames: Tensor) -> np.ndarray:
    """(T, 3, H, W) in [-1, 1] -> (T, H, W, 3) uint8."""
    return ((frames.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def write_mp4(path: Path, frames: Tensor, fps: float):
    """(T, 3, H, W) in [-1, 1] -> an H.264 (or MPEG-4 part 2) mp4 in yuv420p, which needs even sizes."""
    import av

    height, width = frames.shape[-2:]
    if height % 2 or width % 2:
        raise TrainingError(f"yuv420p video needs an even height and width, found {height}x{width}; "
                            "pick even sizes or write frame folders (as_='frames').")
    codec = "libx264" if _has_encoder("libx264") else "mpeg4"
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(100_000))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": "10", "preset": "fast"}
        else:
            stream.bit_rate = 40 * width * height
        for image in to_uint8(frames):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())


def _has_encoder(name: str) -> bool:
    import av

    try:
        av.codec.Codec(name, "w")
        return True
    except Exception:
        return False


def write_frames(folder: Path, frames: Tensor):
    """(T, 3, H, W) in [-1, 1] -> folder/00000.png, 00001.png, ..."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(to_uint8(frames)):
        Image.fromarray(image).save(folder / f"{i:05d}.png")


def write_dataset(folder, count: int, seed: int, frames: int, height: int, width: int, fps: float = 30.0,
                  as_: str = "mp4", scale: int = 1) -> dict[str, str]:
    """`count` moving-shapes clips as clip_0000.mp4... or clip_0000/00000.png..., plus captions.json.
    Clip i is moving_shapes_clip(scene_seed(seed, i), ..., scale=scale): the same scenes at `scale`
    times the size for another scale. Returns {name: caption}."""
    if as_ not in ("mp4", "frames"):
        raise TrainingError(f"expected as_='mp4' or as_='frames', found {as_!r}.")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    captions = {}
    for i in range(count):
        clip = moving_shapes_clip(scene_seed(seed, i), frames, height, width, fps, scale=scale)
        name = f"clip_{i:04d}" + (".mp4" if as_ == "mp4" else "")
        if as_ == "mp4":
            write_mp4(folder / name, clip.frames, fps)
        else:
            write_frames(folder / name, clip.frames)
        captions[name] = clip.caption
    (folder / "captions.json").write_text(json.dumps(captions, indent=1))
    return captions


def write_users_video(input_dir) -> Path:
    """The video the upscale recipe loads (workflows/recipes/api/upscale_video_file.json), where a
    user uploads it: `input_dir/my_clip.mp4`, 8 moving-shapes frames of 32 px at 8 fps."""
    path = Path(input_dir) / "my_clip.mp4"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_mp4(path, moving_shapes_clip(3, 8, 32, 32, 8.0).frames, 8.0)
    return path
