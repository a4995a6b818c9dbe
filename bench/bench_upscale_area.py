"""Video Upscale at a fixed tile size vs the untiled x4 path, at 1x, ~4x and ~16x output area: time
per output pixel and the sampling's activation peak, each point in a fresh process.

Model: ComfyUI's own SD x4 upscaler architecture (SD_X4Upscaler, 7 input channels, noise level as
class label; the pack's tiny x4 bundle spec) at a chosen width with random weights; 1 Euler step, cfg 1, fp32 on CPU. "untiled" is
Video Upscale with one tile covering the frame, which the tests show equals core's untiled sampling
exactly when given the same float32 frames (Video Upscale holds its low-res frames in float16, so
here it is the pack's untiled path, a little lighter than core's); "tiled" uses tiles of --tile
latent pixels overlapping by --overlap. Times run with glibc's default allocator (no MALLOC_*
settings), peaks with a fixed mmap threshold (bench/common.py).

The input sides are o + k (t - o) for k = 1, 2, 4 (t tile, o overlap), so the tiles fit each frame
exactly and the re-denoised share of the overlaps is nearly the same at every size.

Targets (issue 7): tiled peak within 1.15x across the range; tiled time per output pixel flat
within 15 %. Peaks are read twice: over the whole sampling, and inside each UNet call above the
memory held when it starts, which separates the tiles' activations (bounded by the tile) from the
sampler's own latent-sized state (noise, x, the denoised latent, the low-res conditioning), which
any sampler of that latent holds.

--full builds the SD x4 upscaler's own UNet (FULL_X4). The ratios do not depend on --frames (tile
activations and the sampler's state both grow with it), so --frames 1 is enough on two CPU cores.

Usage: .venv/bin/python -m bench.bench_upscale_area [--tile 64] [--overlap 8] [--frames 4] [--width 128] [--k 1 2 4]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch

from devtools.comfy_in_process import init_comfy

from .common import PEAK_ENV, default_allocator_env, print_table, reset_peak, status_gib, step_peak_gib
from devtools import tiny_bundles


# The SD x4 upscaler's own UNet (x4-upscaling.yaml: width 256, levels 1/2/2/4, two ResBlocks per
# level, transformers from the second level on, self-attention on the lowest only), with the tiny
# text encoder's context width instead of 1024 (cross-attention's keys are 77 tokens either way).
FULL_X4 = {"model_channels": 256, "channel_mult": [1, 2, 2, 4], "num_res_blocks": [2, 2, 2, 2],
           "transformer_depth": [0, 0, 1, 1, 1, 1, 1, 1], "transformer_depth_output": [0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1],
           "transformer_depth_middle": 1, "num_heads": 8}


def build(width: int, full: bool = False):
    import dataclasses
    import importlib

    pack = init_comfy()
    bundle_host = importlib.import_module(f"{pack.__name__}.host.bundle")
    spec = tiny_bundles.tiny_x4_spec()
    unet = {**spec.unet_config, **FULL_X4} if full else {**spec.unet_config, "model_channels": width}
    spec = dataclasses.replace(spec, unet_config=unet)
    model, clip, _ = bundle_host.build_components(spec, tiny_bundles.random_bundle_state_dict(spec, seed=4), source="bench")
    upscale = importlib.import_module(f"{pack.__name__}.nodes.video_upscale").VideoUpscale
    return model, upscale, clip.encode_from_tokens_scheduled(clip.tokenize("a sharp video"))


def measured_calls(model, calls: list, highest: list):
    """A clone of MODEL whose diffusion-model calls record their own peak above the memory held when
    they start (the sampler's latent-sized state is held then; the tiles' activations are not). Each
    call resets the kernel's high-water mark, so the mark reached before the reset is kept in
    `highest` (one number, the running maximum in GiB): the whole run's peak is the larger of it and
    the mark at the end."""
    import comfy.patcher_extension

    def wrapper(executor, *args, **kwargs):
        highest[0] = max(highest[0], status_gib("VmHWM"))
        before = reset_peak()
        out = executor(*args, **kwargs)
        calls.append(status_gib("VmHWM") - before)
        return out

    model = model.clone()
    model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "bench_peak", wrapper)
    return model


def child(method: str, side: int, args) -> dict:
    model, upscale, text = build(args.width, args.full)
    tile = args.tile if method == "tiled" else side
    overlap = args.overlap if method == "tiled" else 0

    def work(side=side, frames=args.frames):
        images = torch.rand(frames, side, side, 3, generator=torch.Generator().manual_seed(1))
        return upscale.execute(model, text, text, 0.1, 0, 1, 1.0, "euler", "normal", tile, overlap, frames, 0,
                               images=images).result[0]["samples"]

    with torch.inference_mode():
        work(min(side, args.tile), 1)  # warm-up: model load, first-call allocations
        if args.measure == "peak":
            calls, highest = [], [0.0]
            model = measured_calls(model, calls, highest)
            before = status_gib("VmRSS")
            step_peak_gib(work)   # resets the mark first; the calls reset it again
            total = max(highest[0], status_gib("VmHWM"))   # the process at its peak, weights included
            return {"peak_gib": total - before, "model_call_gib": max(calls), "total_gib": total}
        start = time.perf_counter()
        work()
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "us_per_pixel": seconds / (args.frames * (4 * side) ** 2) * 1e6}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tile", type=int, default=64, help="tile side in latent (= input) pixels, a multiple of 8")
    parser.add_argument("--overlap", type=int, default=8)
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--width", type=int, default=128, help="UNet model_channels (full size: 256)")
    parser.add_argument("--full", action="store_true", help="the SD x4 upscaler's full UNet (--width is ignored)")
    parser.add_argument("--k", type=int, nargs="+", default=[1, 2, 4], help="tiles per side")
    parser.add_argument("--methods", nargs="+", default=["tiled", "untiled"])
    parser.add_argument("--child", nargs=2, metavar=("METHOD", "SIDE"))
    parser.add_argument("--measure", choices=("time", "peak"), default="time", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]), args)))
        return
    sides = [args.overlap + k * (args.tile - args.overlap) for k in args.k]
    if any(s % 8 for s in sides):
        raise SystemExit(f"input sides {sides} must be multiples of 8; pick a tile and overlap that are")
    results = {}
    for method in args.methods:
        for side in sides:
            result = {}
            # time with the default allocator; peak with a fixed mmap threshold (bench/common.py)
            for measure, env in (("time", default_allocator_env()), ("peak", {**os.environ, **PEAK_ENV})):
                proc = subprocess.run([sys.executable, "-m", "bench.bench_upscale_area", "--tile", str(args.tile),
                                       "--overlap", str(args.overlap), "--frames", str(args.frames), "--width", str(args.width),
                                       *(["--full"] if args.full else []),
                                       "--measure", measure, "--child", method, str(side)], capture_output=True, text=True,
                                      env=env)
                if proc.returncode != 0:
                    print(f"{method} {side} {measure}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
                    break
                result.update(json.loads(proc.stdout.strip().splitlines()[-1]))
            else:
                results[method, side] = result
                print(method, side, result, flush=True)
    rows = []
    for method in args.methods:
        base = results.get((method, sides[0]))
        for side in sides:
            r = results.get((method, side))
            if r is None or base is None:
                rows.append((method, f"{side}->{4 * side}", "failed", "", "", "", "", "", "", "", ""))
                continue
            rows.append((method, f"{side}->{4 * side}", f"{(side / sides[0]) ** 2:.1f}x", f"{r['us_per_pixel']:.2f}",
                         f"{r['us_per_pixel'] / base['us_per_pixel']:.2f}x", f"{r['peak_gib']:.3f}",
                         f"{r['peak_gib'] / base['peak_gib']:.2f}x", f"{r['model_call_gib']:.3f}",
                         f"{r['model_call_gib'] / base['model_call_gib']:.2f}x", f"{r['total_gib']:.3f}",
                         f"{r['total_gib'] / base['total_gib']:.2f}x"))
    architecture = "the full SD x4 UNet" if args.full else f"x4 architecture at width {args.width}"
    print_table(f"Video Upscale, {architecture}, {args.frames} frames, tile {args.tile} / overlap "
                f"{args.overlap}, 1 Euler step, cfg 1, fp32 CPU, peaks with a fixed mmap threshold; ratios vs the smallest area",
                rows, ("method", "input->output", "area", "us/out px", "time ratio", "peak GiB", "peak ratio",
                       "model call GiB", "call ratio", "process GiB", "process ratio"))
    print("\npeak: the whole sampling above the loaded model; model call: the largest rise inside one UNet call (the tiles'\n"
          "activations and the blend), above the sampler's latent-sized state held at that point; process: the resident\n"
          "memory at the peak, weights and runtime included (what the machine must have).")


if __name__ == "__main__":
    main()
