"""The template browser's thumbnails (`workflows/<name>.jpg`, which ComfyUI serves beside each
template graph): each template's API twin run through a real server, and four frames of the video
it wrote, evenly spaced in time, in a 2x2 grid.

Usage: python -m devtools.thumbnails [names...]   (after devtools/setup.sh; minutes on CPU)
"""

from __future__ import annotations

import json
import sys

from PIL import Image

from . import paths
from .comfy_server import ComfyServer
from .frame_strip import read_frames

CELL = 192


def thumbnail(video, out) -> None:
    frames, _ = read_frames(video)
    picks = [frames[round(i * (len(frames) - 1) / 3)] for i in range(4)]
    grid = Image.new("RGB", (2 * CELL, 2 * CELL))
    for i, frame in enumerate(picks):
        grid.paste(Image.fromarray(frame).resize((CELL, CELL), Image.BILINEAR), ((i % 2) * CELL, (i // 2) * CELL))
    grid.save(out, quality=85)


def main(names: list[str]) -> int:
    prompts = sorted(paths.API_PROMPTS.glob("*.json"))
    with ComfyServer() as server:
        for prompt in (p for p in prompts if not names or p.stem in names):
            run = server.run_prompt(json.loads(prompt.read_text()), timeout=1800)
            if run.status != "success":
                print(f"{prompt.stem}: {run.error_message()}", file=sys.stderr)
                return 1
            [video] = [p for p in server.output_files(run) if p.suffix == ".mp4"]
            out = paths.WORKFLOWS / f"{prompt.stem}.jpg"
            thumbnail(video, out)
            print(out.relative_to(paths.REPO_ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
