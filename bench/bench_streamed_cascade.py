"""Host memory per output frame of the cascade's last stages through a real server: low-res frames →
Video Upscale (x4, the toy family's upscaler with its temporal layers) → decode → mp4, with the
decode in memory (Temporal VAE Decode → CreateVideo → Save Video, as the templates did) or streamed
(Temporal VAE Decode to Video → Save Video).

Each run is a fresh server; the figure is the server's peak RSS while the prompt runs minus its RSS
before (a warm-up prompt has loaded the models), at two lengths; the slope between them is the
memory each output frame costs. Peak RSS is the kernel's high-water mark (VmHWM, reset before the
prompt), or where a sandboxed kernel (gVisor) keeps none, resident memory polled every 5 ms (the
latents and frames this measures are held for seconds; each run says which). The decode uses the toy VAE without its temporal add-on (the toy add-on's 3-D convolutions
take seconds per 256 px frame on CPU; decoder activations are per window either way, not per frame).
Both lengths must be at least the decode window (default 8): a shorter video decodes in a shorter
window, and the decoder's activations (~130 MiB a frame of window at 256 px) would pass for memory
per output frame.

With `--graph cascade` it runs the whole cascade template instead (keyframes → rollout →
interpolation twice → x4 upscaling → decode → mp4) at two rollout lengths (`--segments`): "streamed"
is the template as it ships (Video Upscale decodes its low-res latents itself, Temporal VAE Decode to
Video), "in memory" the template as it was before issue 22 (Temporal VAE Decode → Video Upscale's
`images`, Temporal VAE Decode → CreateVideo → Save Video). The temporal decoder add-on is left out
here too.

With `--device cuda` the server samples and decodes on the GPU (ComfyUI without `--cpu`): the
sampler's state is then device memory, and the figure is what the host keeps per output frame.

Usage: .venv/bin/python -m bench.bench_streamed_cascade [--frames 16 48] [--side 64] [--window 8]
       [--paths in-memory streamed] [--graph last-stages|cascade] [--segments 2 4] [--device cpu|cuda]
       [--server-args "--front-end-root DIR"]
"""

from __future__ import annotations

import argparse
import json
from functools import partial

from devtools.comfy_server import ComfyServer
from devtools.paths import api_prompt
from devtools.process_memory import PeakRSS, rss_bytes

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


def cascade_prompt(segments: int, streamed: bool, window: int) -> dict:
    """The cascade template with `segments` rollout segments; in memory: as it was before issue 22."""
    graph = json.loads(api_prompt("cascade").read_text())
    graph["8"]["inputs"]["segments"] = segments
    graph["13"]["inputs"]["temporal_decoder"] = "none"
    graph["21"]["inputs"]["window"] = window
    graph["23"]["inputs"]["filename_prefix"] = f"bench/cascade_{'streamed' if streamed else 'in_memory'}_{segments}"
    if not streamed:
        decode = {k: v for k, v in graph["21"]["inputs"].items() if k != "fps"}
        graph["14"] = {"class_type": "VideoLDMTemporalVAEDecode", "inputs": {**decode, "samples": ["12", 0], "window": 17}}
        upscale = graph["20"]["inputs"]
        del upscale["low_res_latent"], upscale["vae"]
        upscale["images"] = ["14", 0]
        graph["21"] = {"class_type": "VideoLDMTemporalVAEDecode", "inputs": decode}
        graph["22"] = {"class_type": "CreateVideo", "inputs": {"images": ["21", 0], "fps": ["12", 1], "bit_depth": 8}}
        graph["23"]["inputs"]["video"] = ["22", 0]
    return graph


def cascade_frames(segments: int) -> int:
    from videoldm_core.rollout import rollout_length

    rollout = json.loads(api_prompt("cascade").read_text())["8"]["inputs"]
    return 16 * rollout_length(1, rollout["segment_length"], rollout["context_frames"], segments) - 15


def measure(graph: dict, warm_up: dict, device: str, server_args: tuple[str, ...] = ()) -> float:
    """Peak RSS growth (bytes) of a fresh server running `graph` on `device`, after a warm-up prompt."""
    with ComfyServer(env=PEAK_ENV, cpu=device == "cpu", extra_args=server_args) as server:
        pid = server.process.pid
        warm = server.run_prompt(warm_up, timeout=3600)
        assert warm.status == "success", warm.error_message() or server.log_tail()
        before = rss_bytes(pid)
        with PeakRSS(pid) as peak:
            run = server.run_prompt(graph, timeout=3600)
        assert run.status == "success", run.error_message() or server.log_tail()
        print(f"  peak RSS read from {peak.method}", flush=True)
        return peak.bytes - before


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, nargs=2, default=[16, 48])
    parser.add_argument("--side", type=int, default=64, help="low-res frame side in pixels (output: 4x)")
    parser.add_argument("--window", type=int, default=8, help="decode window in frames (at most the shorter length)")
    parser.add_argument("--paths", nargs="+", choices=("in-memory", "streamed"), default=["in-memory", "streamed"])
    parser.add_argument("--graph", choices=("last-stages", "cascade"), default="last-stages")
    parser.add_argument("--segments", type=int, nargs=2, default=[2, 4], help="--graph cascade: rollout segments")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the server samples and decodes")
    parser.add_argument("--server-args", default="", help="more ComfyUI arguments, e.g. '--front-end-root DIR' where "
                        "the frontend package is not installed (devtools/device_figures.sh)")
    args = parser.parse_args()
    if args.graph == "cascade":              # a length is a number of rollout segments; warm-up: one
        args.side = 64                       # the toy keyframes: 64 px, upscaled to 256
        lengths, warm_length, args.frames = args.segments, 1, [cascade_frames(n) for n in args.segments]
        graph = partial(cascade_prompt, window=args.window)
    else:                                    # a length is a number of frames; warm-up: one window
        lengths, warm_length = args.frames, args.window
        graph = partial(prompt, side=args.side, window=args.window)
    if min(args.frames) < args.window:
        parser.error(f"both lengths must be at least the decode window ({args.window} frames)")
    growth = {}
    for streamed in [path == "streamed" for path in args.paths]:
        for frames, length in zip(args.frames, lengths):
            growth[(streamed, frames)] = measure(graph(length, streamed=streamed), graph(warm_length, streamed=streamed),
                                               args.device, tuple(args.server_args.split()))
            print(f"{'streamed' if streamed else 'in memory'} at {frames} frames: peak growth "
                  f"{growth[(streamed, frames)] / 2**20:.1f} MiB", flush=True)
    lo, hi = args.frames
    out_frame_mb = (4 * args.side) ** 2 * 3 * 4 / 2**20
    measured = sorted({s for s, _ in growth})
    slopes = {s: (growth[(s, hi)] - growth[(s, lo)]) / (hi - lo) / 2**20 for s in measured}
    names = (("Temporal VAE Decode → CreateVideo → Save Video", "Temporal VAE Decode to Video") if args.graph == "last-stages"
             else ("the template as it was (IMAGEs between the stages)", "the template (latents into Video Upscale, streamed decode)"))
    rows = [(names[s],
             f"{growth[(s, lo)] / 2**20:.1f}", f"{growth[(s, hi)] / 2**20:.1f}", f"{slopes[s]:.2f}") for s in measured]
    source = f"Moving Shapes {args.side} px" if args.graph == "last-stages" else f"the cascade template (segments {args.segments})"
    print_table(f"{source} → Video Upscale x4 (toy, 6 steps) → decode (window {args.window}) → mp4 of {4 * args.side} px "
                f"({out_frame_mb:.2f} MiB per float32 output frame), on {args.device}; server peak RSS growth", rows,
                ("path", f"{lo} frames MiB", f"{hi} frames MiB", "MiB per output frame"))
    if len(slopes) == 2:
        print(f"\nin memory / streamed, MiB per output frame: {slopes[False] / slopes[True]:.2f}")


if __name__ == "__main__":
    main()
