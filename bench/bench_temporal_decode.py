"""Temporal VAE Decode vs core VAE Decode on the same SVD-shaped VAE (SD's KL-f8 with SVD's
temporal decoder layers, random weights, loaded by ComfyUI's own SVD detection for core and by
Load Temporal VAE for the pack), at 16 and 128 frames: seconds per frame and the decode's
activation peak (each measured in a fresh process).

Targets (issue 6): the pack's peak at 128 frames within 1.15x of its peak at 16 (windows bound
memory); time per frame within 1.1x of core.

Usage: .venv/bin/python -m bench.bench_temporal_decode [--latent 8] [--window 17] [--overlap 1]   (the node defaults)
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

from .common import PEAK_ENV, default_allocator_env, print_table, step_peak_gib

SD_DDCONFIG = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
               "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}


def svd_vae_state_dict():
    from comfy.ldm.modules.diffusionmodules.model import Encoder
    from comfy.ldm.modules.temporal_ae import VideoDecoder

    torch.manual_seed(0)
    parts = {"encoder": Encoder(**SD_DDCONFIG), "decoder": VideoDecoder(video_kernel_size=[3, 1, 1], alpha=0.0, **SD_DDCONFIG),
             "quant_conv": torch.nn.Conv2d(8, 8, 1)}
    out = {}
    with torch.no_grad():
        for prefix, module in parts.items():
            for key, value in module.state_dict().items():
                out[f"{prefix}.{key}"] = torch.randn_like(value) * 0.02 + (1.0 if key.endswith(("norm1.weight", "norm2.weight", "norm.weight", "norm_out.weight")) else 0.0)
    return out


def build():
    pack = init_comfy()
    import importlib

    import comfy.sd

    temporal_vae = importlib.import_module(f"{pack.__name__}.host.temporal_decoder")
    state_dict = svd_vae_state_dict()
    core = comfy.sd.VAE(sd=dict(state_dict))  # ComfyUI detects the SVD decoder (mix_factor keys)
    ours = temporal_vae.load_temporal_vae(state_dict, "'svd-shaped'")
    return core, ours, temporal_vae


def run(path, frames, args, core, ours, temporal_vae):
    torch.manual_seed(1)
    z = torch.randn(frames, 4, args.latent, args.latent)
    with torch.inference_mode():
        if path == "core VAE Decode":
            return core.decode(z)
        return temporal_vae.decode_video(ours, z, args.window, args.overlap)


PATHS = ("core VAE Decode", "Temporal VAE Decode")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latent", type=int, default=8)
    parser.add_argument("--window", type=int, default=17)
    parser.add_argument("--overlap", type=int, default=1)
    parser.add_argument("--frames", type=int, nargs="+", default=[16, 128])
    parser.add_argument("--default-allocator", action="store_true", help="measure peaks with glibc's dynamic mmap threshold")
    parser.add_argument("--peak-of", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    core, ours, temporal_vae = build()

    if args.peak_of:
        path, frames = args.peak_of[0], int(args.peak_of[1])
        print(json.dumps(step_peak_gib(lambda: run(path, frames, args, core, ours, temporal_vae))))
        return

    seconds = {}
    for frames in args.frames:
        for path in PATHS:  # warm-up, then alternate the two paths
            run(path, min(frames, 4), args, core, ours, temporal_vae)
        times = {path: [] for path in PATHS}
        for _ in range(2):
            for path in PATHS:
                start = time.perf_counter()
                run(path, frames, args, core, ours, temporal_vae)
                times[path].append(time.perf_counter() - start)
        for path in PATHS:
            seconds[(path, frames)] = min(times[path])
            print(f"{path} at {frames} frames: {seconds[(path, frames)] / frames * 1e3:.1f} ms/frame", flush=True)
    del core, ours
    peaks = {}
    for frames in args.frames:
        for path in PATHS:
            out = subprocess.run([sys.executable, "-m", "bench.bench_temporal_decode", "--latent", str(args.latent),
                                  "--window", str(args.window), "--overlap", str(args.overlap), "--peak-of", path, str(frames)],
                                 capture_output=True, text=True,
                                 env=default_allocator_env() if args.default_allocator else {**os.environ, **PEAK_ENV})
            if out.returncode != 0:
                raise RuntimeError(f"peak of {path} at {frames} frames failed: {out.stderr[-1500:]}")
            peaks[(path, frames)] = json.loads(out.stdout.strip().splitlines()[-1])
    rows = []
    for frames in args.frames:
        for path in PATHS:
            per_frame = seconds[(path, frames)] / frames
            rows.append((path, frames, f"{per_frame * 1e3:.1f}", f"{per_frame / (seconds[('core VAE Decode', frames)] / frames):.3f}",
                         f"{peaks[(path, frames)]:.2f}"))
    print_table(f"SVD-shaped VAE decode ({args.latent}x{args.latent} latent -> {args.latent * 8}px), window {args.window}, "
                f"overlap {args.overlap}, fp32 CPU, best of 2; peaks with "
                f"{'the default allocator' if args.default_allocator else 'a fixed mmap threshold'}", rows, ("path", "frames", "ms/frame", "x core", "peak GiB"))
    lo, hi = min(args.frames), max(args.frames)
    print(f"\nTemporal VAE Decode peak at {hi} frames / at {lo}: {peaks[('Temporal VAE Decode', hi)] / peaks[('Temporal VAE Decode', lo)]:.2f} "
          f"(target <= 1.15); core: {peaks[('core VAE Decode', hi)] / peaks[('core VAE Decode', lo)]:.2f}")
    print(f"time per frame vs core at {hi} frames: {seconds[('Temporal VAE Decode', hi)] / seconds[('core VAE Decode', hi)]:.3f} (target <= 1.1)")


if __name__ == "__main__":
    main()
