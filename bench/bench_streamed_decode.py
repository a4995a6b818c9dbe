"""The last stage of a long render, streamed vs in memory: latents → Temporal VAE Decode →
CreateVideo → Save Video (every frame an IMAGE in host memory, then encoded) against Temporal VAE
Decode to Video (frames encoded window by window): peak RSS of each run in a fresh process (on CPU
the device peak is the host peak) and seconds per output frame. By default 128 and 1,024 frames of
320x512 (the paper's base resolution, where the in-memory path still fits 1,024 frames on a 24 GB
machine); `--height 1280 --width 2048` is the paper's text-to-video output size, where 1,024
in-memory frames would need ~36 GiB more (run it with fewer frames).

The latents are synthetic (smooth in time and space) and the VAE is ComfyUI's real VAE object with
a deliberately cheap decoder (a 1x1 convolution and a x8 nearest upsampling): a full SD decoder at
1280x2048 takes seconds per frame on CPU and would hide what the two paths do differently
(blending, 8-bit conversion, holding frames, encoding), which is what this measures. Both paths
call the same decoder the same number of times.

The latents are the stage's input and whole by design (ComfyUI holds a LATENT for the whole
video): float32 by default, as ComfyUI's samplers give them, or `--latent-dtype float16` (issue 22:
latents compact where exact enough; the decode casts each window to the VAE's dtype). At 1280x2048
a float32 latent is 0.625 MiB a frame, so the table also gives each peak less its latents: what the
path itself holds. Peaks count from the process's start (~0.75 GiB of imports, ComfyUI and the VAE);
the table also gives each peak above the process at rest, after those and before the runs, and the
ratios of both.

Targets (issue 22): the streamed peak at 1,024 frames within 1.15x of its peak at 128; the
streamed time per frame within 1.1x of the in-memory path's where both fit.

Usage: .venv/bin/python -m bench.bench_streamed_decode [--height 320 --width 512]
       [--streamed 128 1024] [--in-memory 128 1024] [--window 17 --overlap 1]
       .venv/bin/python -m bench.bench_streamed_decode --height 1280 --width 2048 --streamed 128 1024 --in-memory 16 32
       [--latent-dtype float16]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import torch

from devtools.comfy_in_process import init_comfy
from devtools.process_memory import peak_rss_bytes, rss_bytes

from .common import PEAK_ENV, print_table

TINY_DDCONFIG = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 32,
                 "ch_mult": [1, 1, 1, 1], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0}
SCALE = 8


class CheapDecoder(torch.nn.Module):
    """A stand-in for a VAE decoder: latents → RGB at 8x, a few operations per output pixel."""

    def __init__(self):
        super().__init__()
        self.to_rgb = torch.nn.Conv2d(4, 3, 1)
        torch.nn.init.normal_(self.to_rgb.weight, std=0.5)

    def forward(self, z):
        return torch.nn.functional.interpolate(self.to_rgb(z), scale_factor=SCALE, mode="nearest")


def build():
    pack = init_comfy()
    import importlib

    from comfy.ldm.modules.diffusionmodules.model import Decoder, Encoder

    temporal_vae = importlib.import_module(f"{pack.__name__}.host.temporal_decoder")
    torch.manual_seed(0)
    state_dict = {}
    for prefix, module in (("encoder", Encoder(**TINY_DDCONFIG)), ("decoder", Decoder(**TINY_DDCONFIG))):
        state_dict.update({f"{prefix}.{k}": v for k, v in module.state_dict().items()})
    state_dict.update({"quant_conv.weight": torch.eye(8)[:, :, None, None], "quant_conv.bias": torch.zeros(8),
                       "post_quant_conv.weight": torch.eye(4)[:, :, None, None], "post_quant_conv.bias": torch.zeros(4)})
    vae = temporal_vae.load_temporal_vae(state_dict, "'bench'")
    vae.first_stage_model.decoder = CheapDecoder()
    return vae, temporal_vae


def latents(frames: int, height: int, width: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Smooth synthetic latents: a few low-frequency waves drifting over time, in `dtype`."""
    t = torch.arange(frames, dtype=torch.float32)[:, None, None, None]
    y = torch.linspace(0, 1, height // SCALE)[None, None, :, None]
    x = torch.linspace(0, 1, width // SCALE)[None, None, None, :]
    c = torch.arange(4, dtype=torch.float32)[None, :, None, None]
    return (torch.sin(6.0 * x + 4.0 * y * (c + 1) + 0.05 * t)
            + torch.cos(5.0 * y - 3.0 * x + 0.03 * t * (c + 1))).to(dtype)


def run(path: str, frames: int, args, vae, temporal_vae, out_file: Path):
    from comfy_api.latest import InputImpl, Types

    z = latents(frames, args.height, args.width, getattr(torch, args.latent_dtype))
    with torch.inference_mode():
        if path == "in memory":
            images = temporal_vae.decode_video(vae, z, args.window, args.overlap)
            video = InputImpl.VideoFromComponents(Types.VideoComponents(images=images, frame_rate=Fraction(args.fps)))
            video.save_to(str(out_file))
        else:
            temporal_vae.decode_video_to_file(vae, z, args.window, args.overlap, 0, args.fps, out_file)


PATHS = {"in memory": "Temporal VAE Decode → CreateVideo → Save Video", "streamed": "Temporal VAE Decode to Video"}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--height", type=int, default=320)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--window", type=int, default=17)
    parser.add_argument("--overlap", type=int, default=1)
    parser.add_argument("--fps", type=float, default=24.0)
    parser.add_argument("--latent-dtype", choices=("float32", "float16"), default="float32")
    parser.add_argument("--streamed", type=int, nargs="+", default=[128, 1024])
    parser.add_argument("--in-memory", type=int, nargs="+", default=[128, 1024])
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.one:   # a single run in this fresh process: its seconds and peak RSS
        vae, temporal_vae = build()
        at_rest = rss_bytes()
        with tempfile.TemporaryDirectory() as folder:
            run(args.one[0], 4, args, vae, temporal_vae, Path(folder) / "warm.mp4")   # warm-up
            start = time.perf_counter()
            run(args.one[0], int(args.one[1]), args, vae, temporal_vae, Path(folder) / "out.mp4")
            seconds = time.perf_counter() - start
            size = os.path.getsize(Path(folder) / "out.mp4")
        print(json.dumps({"seconds": seconds, "peak": peak_rss_bytes() / 2**30, "at_rest": at_rest / 2**30, "bytes": size}))
        return

    results = {}
    for path, counts in (("in memory", args.in_memory), ("streamed", args.streamed)):
        for frames in counts:
            command = [sys.executable, "-m", "bench.bench_streamed_decode", "--height", str(args.height), "--width",
                       str(args.width), "--window", str(args.window), "--overlap", str(args.overlap), "--fps",
                       str(args.fps), "--latent-dtype", args.latent_dtype, "--one", path, str(frames)]
            out = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **PEAK_ENV})
            if out.returncode != 0:
                raise RuntimeError(f"{path} at {frames} frames failed: {out.stderr[-2000:]}")
            results[(path, frames)] = json.loads(out.stdout.strip().splitlines()[-1])
            r = results[(path, frames)]
            print(f"{path} at {frames} frames: {r['seconds'] / frames * 1e3:.0f} ms/frame, peak {r['peak']:.2f} GiB",
                  flush=True)

    frame_mb = args.height * args.width * 3 * 4 / 2**20
    latent_gib = 4 * (args.height // SCALE) * (args.width // SCALE) * getattr(torch, args.latent_dtype).itemsize / 2**30
    rows = [(PATHS[path], frames, f"{r['seconds'] / frames * 1e3:.0f}", f"{r['peak']:.2f}",
             f"{r['peak'] - frames * latent_gib:.2f}", f"{r['peak'] - r['at_rest']:.2f}", f"{r['bytes'] / 2**20:.1f}")
            for (path, frames), r in results.items()]
    print_table(f"{args.latent_dtype} latents ({latent_gib * 2**30 / 2**20:.3f} MiB a frame) → mp4 at {args.height}x"
                f"{args.width} ({frame_mb:.1f} MB per float32 frame), window {args.window}, overlap {args.overlap}, "
                f"fps {args.fps:g}; each run a fresh process",
                rows, ("path", "frames", "ms/frame", "peak RSS GiB", "less latents GiB", "above at rest GiB", "file MiB"))
    lo, hi = min(args.streamed), max(args.streamed)
    s_lo, s_hi = results[("streamed", lo)], results[("streamed", hi)]
    print(f"\nstreamed peak at {hi} frames / at {lo}: {s_hi['peak'] / s_lo['peak']:.3f} (target <= 1.15); less "
          f"the latents: {(s_hi['peak'] - hi * latent_gib) / (s_lo['peak'] - lo * latent_gib):.3f}; above the process at "
          f"rest: {(s_hi['peak'] - s_hi['at_rest']) / (s_lo['peak'] - s_lo['at_rest']):.3f}")
    m_lo, m_hi = min(args.in_memory), max(args.in_memory)
    growth = (results[("in memory", m_hi)]["peak"] - results[("in memory", m_lo)]["peak"]) * 1024 / (m_hi - m_lo)
    print(f"in-memory peak at {m_hi} frames / at {m_lo}: "
          f"{results[('in memory', m_hi)]['peak'] / results[('in memory', m_lo)]['peak']:.3f} "
          f"({growth:.1f} MiB per frame; {hi} frames would need ~{growth * hi / 1024:.0f} GiB)")
    streamed_slope = (s_hi["peak"] - s_lo["peak"]) * 1024 / (hi - lo)
    print(f"streamed: {streamed_slope:.3f} MiB per frame")
    both = sorted(set(args.streamed) & set(args.in_memory))
    for frames in both:
        ratio = (results[("streamed", frames)]["seconds"] / results[("in memory", frames)]["seconds"])
        print(f"time per frame, streamed / in memory at {frames} frames: {ratio:.3f} (target <= 1.1)")


if __name__ == "__main__":
    main()
