"""Host memory per output frame of the cascade's last stages through a real server: low-res frames →
Video Upscale (x4, the toy family's upscaler with its temporal layers) → decode → mp4, with the
decode in memory (Temporal VAE Decode → CreateVideo → Save Video, as the templates did) or streamed
(Temporal VAE Decode to Video → Save Video).

Each run is a fresh server; the figure is the server's peak RSS while the prompt runs minus its RSS
before (a warm-up prompt has loaded the models), at two lengths; the slope between them is the
memory each output frame costs. Peak RSS is the kernel's high-water mark (VmHWM, reset before the
prompt). The decode uses the toy VAE without its temporal add-on (the toy add-on's 3-D convolutions
take seconds per 256 px frame on CPU; decoder activations are per window either way, not per frame).
Both lengths must be at least the decode window (default 8): a shorter video decodes in a shorter
window, and the decoder's activations (~130 MiB a frame of window at 256 px) would pass for memory
per output frame.

Usage: .venv/bin/python -m bench.bench_streamed_cascade [--frames 16 48] [--side 64] [--window 8]
       [--paths in-memory streamed]
"""

from __future__ import annotations

import argparse
import json

from devtools.comfy_server import ComfyServer
from devtools.paths import api_prompt
from devtools.process_memory import peak_rss_bytes, reset_peak_rss, rss_bytes

from .common import PEAK_ENV, print_table


def prompt(frames: int, side: int, streamed: bool, window: int) -> dict:
    graph = json.loads(api_prompt("upscale").read_text())
    graph["4"]["inputs"].update(frames=frames, width=side, height=side)
    graph["6"]["inputs"]["temporal_decoder"] = "none"
    graph["7"]["inputs"]["window"] = window
    graph["9"]["inputs"]["filename_prefix"] = f"bench/{'streamed' if streamed else 'in_memory'}_{frames}"
    if streamed:
        graph["7"] = {"class_type": "VideoLDMTemporalVAEDecodeToVideo",
                      "inputs": {**graph["7"]["inputs"], "fps": graph["8"]["inputs"]["fps"]}}
        del graph["8"]
        graph["9"]["inputs"]["video"] = ["7", 0]
    return graph


def measure(frames: int, side: int, streamed: bool, window: int) -> float:
    """Peak RSS growth (bytes) of a fresh server running the prompt, after a warm-up of one window."""
    with ComfyServer(env=PEAK_ENV) as server:
        pid = server.process.pid
        warm = server.run_prompt(prompt(window, side, streamed, window))
        assert warm.status == "success", warm.error_message() or server.log_tail()
        before = rss_bytes(pid)
        reset_peak_rss(pid)
        run = server.run_prompt(prompt(frames, side, streamed, window), timeout=3600)
        assert run.status == "success", run.error_message() or server.log_tail()
        return peak_rss_bytes(pid) - before


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, nargs=2, default=[16, 48])
    parser.add_argument("--side", type=int, default=64, help="low-res frame side in pixels (output: 4x)")
    parser.add_argument("--window", type=int, default=8, help="decode window in frames (at most the shorter length)")
    parser.add_argument("--paths", nargs="+", choices=("in-memory", "streamed"), default=["in-memory", "streamed"])
    args = parser.parse_args()
    if min(args.frames) < args.window:
        parser.error(f"both lengths must be at least the decode window ({args.window} frames)")
    growth = {}
    for streamed in [path == "streamed" for path in args.paths]:
        for frames in args.frames:
            growth[(streamed, frames)] = measure(frames, args.side, streamed, args.window)
            print(f"{'streamed' if streamed else 'in memory'} at {frames} frames: peak growth "
                  f"{growth[(streamed, frames)] / 2**20:.1f} MiB", flush=True)
    lo, hi = args.frames
    out_frame_mb = (4 * args.side) ** 2 * 3 * 4 / 2**20
    measured = sorted({s for s, _ in growth})
    slopes = {s: (growth[(s, hi)] - growth[(s, lo)]) / (hi - lo) / 2**20 for s in measured}
    rows = [("Temporal VAE Decode → CreateVideo → Save Video" if not s else "Temporal VAE Decode to Video",
             f"{growth[(s, lo)] / 2**20:.1f}", f"{growth[(s, hi)] / 2**20:.1f}", f"{slopes[s]:.2f}") for s in measured]
    print_table(f"Moving Shapes {args.side} px → Video Upscale x4 (toy, 6 steps) → decode (window {args.window}) → mp4 of {4 * args.side} px "
                f"({out_frame_mb:.2f} MiB per float32 output frame); server peak RSS growth", rows,
                ("last stage", f"{lo} frames MiB", f"{hi} frames MiB", "MiB per output frame"))
    if len(slopes) == 2:
        print(f"\nin memory / streamed, MiB per output frame: {slopes[False] / slopes[True]:.2f}")


if __name__ == "__main__":
    main()
