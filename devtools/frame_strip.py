"""A strip of evenly spaced frames of a video as one PNG (for the README and for looking at a run),
and `read_frames`, the one mp4 reader of the devtools and tests.

Usage: python -m devtools.frame_strip video.mp4 strip.png [--frames 8] [--height 128]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import av
import numpy as np
from PIL import Image


def read_frames(video) -> tuple[list[np.ndarray], float]:
    """A video file's frames as (H, W, 3) uint8 RGB arrays, and its stream's frame rate."""
    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)], float(stream.average_rate)


def write_frame_strip(video, target, count: int = 8, height: int = 128) -> Path:
    frames, _ = read_frames(video)
    if not frames:
        raise ValueError(f"expected a video with frames, found none in {video}.")
    picks = np.linspace(0, len(frames) - 1, min(count, len(frames))).round().astype(int)
    tiles = [Image.fromarray(frames[i]).resize((round(frames[i].shape[1] * height / frames[i].shape[0]), height),
                                              Image.Resampling.NEAREST if frames[i].shape[0] < height else
                                              Image.Resampling.LANCZOS) for i in picks]
    strip = Image.new("RGB", (sum(t.width for t in tiles) + 2 * (len(tiles) - 1), height), (255, 255, 255))
    x = 0
    for tile in tiles:
        strip.paste(tile, (x, 0))
        x += tile.width + 2
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    strip.save(target, optimize=True)
    return Path(target)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("video")
    parser.add_argument("target")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--height", type=int, default=128)
    args = parser.parse_args(argv)
    print(write_frame_strip(args.video, args.target, args.frames, args.height))
    return 0


if __name__ == "__main__":
    sys.exit(main())
