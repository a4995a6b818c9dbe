"""Command 1: the Video LDM cascade on the toy family (workflows/api/cascade.json) through a real
ComfyUI server, with the pack installed the README way (a copy in custom_nodes/comfyui-videoldm
of a fresh base directory, `pip install -r requirements.txt`, no model step); prints the mp4's path.
Keyframes by prediction rollout at 1.875 fps → interpolation twice (7.5, 30 fps) → temporal decode
→ x4 temporal upscaling → temporal decode → mp4.

Usage: devtools/demo.sh [--workflow workflows/api/cascade.json] [--strip frames.png] [--timeout SECONDS]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from . import paths
from .comfy_server import ComfyServer
from .install_copy import install_pack


class ProgressPrinter:
    """Prints, with the elapsed time, each node as it starts and its progress every few seconds."""

    def __init__(self, prompt: dict, every: float = 5.0):
        self.titles = {k: v.get("_meta", {}).get("title", v["class_type"]) for k, v in prompt.items()}
        self.start, self.every, self.last = time.monotonic(), every, 0.0

    def say(self, text: str):
        print(f"[demo] {time.monotonic() - self.start:6.1f}s  {text}", file=sys.stderr, flush=True)

    def __call__(self, message: dict):
        data = message.get("data", {})
        if message["type"] == "executing" and data.get("node") is not None:
            self.say(f"node {data['node']} ({self.titles.get(data['node'], '?')})")
        elif message["type"] == "progress" and (time.monotonic() - self.last >= self.every or data["value"] == data["max"]):
            self.last = time.monotonic()
            self.say(f"node {data['node']}: {data['value']}/{data['max']}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workflow", default=str(paths.api_prompt("cascade")))
    parser.add_argument("--strip", help="also write a strip of the video's frames (PNG) here")
    parser.add_argument("--timeout", type=float, default=1800.0,
                        help="seconds the prompt may run (default 1800; the minute render takes ~2,000 on 2 cores)")
    args = parser.parse_args(argv)

    prompt = json.loads(open(args.workflow).read())
    base = paths.scratch_dir() / "user"
    pack = install_pack(base)
    print(f"[demo] installed the pack in {pack}", file=sys.stderr)
    with ComfyServer(base_dir=base) as server:
        failures = server.import_failures()
        if failures:
            print("[demo] the pack failed to import:\n" + "\n".join(failures), file=sys.stderr)
            return 1
        print(f"[demo] ComfyUI at {server.url}; running {args.workflow}", file=sys.stderr)
        start = time.monotonic()
        run = server.run_prompt(prompt, timeout=args.timeout, on_message=ProgressPrinter(prompt))
        if run.status != "success":
            print(f"[demo] the prompt failed: {run.error_message() or run.status}\n{server.log_tail()}", file=sys.stderr)
            return 1
        videos = [p for p in server.output_files(run) if p.suffix == ".mp4"]
        note = "Models: the toy family the pack ships in toy/, trained by devtools.toy_family."
        print(f"[demo] done in {time.monotonic() - start:.1f}s. {note}", file=sys.stderr)
    if not videos:
        print("[demo] the prompt succeeded but wrote no mp4", file=sys.stderr)
        return 1
    if args.strip:
        from .frame_strip import write_frame_strip

        write_frame_strip(videos[0], args.strip)
    for video in videos:
        print(video)
    return 0


if __name__ == "__main__":
    sys.exit(main())
