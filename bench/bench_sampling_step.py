"""Seconds per sampling step and peak device memory of SD1.5 with temporal layers, through
ComfyUI's own sampler (KSampler's path: comfy.sample.sample), at the paper's text-to-video shape.

Rows, each in a fresh process so that peaks do not mix:
  plain        SD1.5 alone, the frames as a batch (what the spatial layers cost)
  Video LDM    the same model + a Video LDM adapter (the pack's placement, random weights)
  AnimateDiff  the same model + a motion module in AnimateDiff v2's public layout (random weights),
               imported and applied the way Load Temporal Adapter and Apply Temporal Adapter do

Model: SD1.5's UNet shape (devtools/unet_configs.SD15, ~860M parameters) with random weights,
loaded through the pack's bundle loader, so ComfyUI picks the dtype as it does for a user's
checkpoint (fp16 on a CUDA GPU that supports it; the dtype is printed). Default shape: 16 frames at
320x512 (a 40x64 latent), cfg 7.5 (a cond and an uncond per step), Euler. Seconds per step: the
median of the intervals between the step callbacks of one run (each step synchronised on CUDA;
the first step, which also pays the sampler's set-up, is not among them) after a warm-up run that
loads the model. Memory: on CUDA, torch.cuda.max_memory_allocated over the measured run, as
the total (weights included) and above what was allocated before it (activations); on CPU, the
resident high-water mark above the resident memory before the run. In-process, ComfyUI's main.py
does not run, so this is core's ModelPatcher path, not the DynamicVRAM one a ComfyUI server enables
on an NVIDIA GPU (its weights are not counted by torch.cuda.max_memory_allocated).

`--size tiny` (the tests' tiny SD1.x architecture) with `--device cpu` checks the bench itself on
a machine without a GPU.

Usage: .venv/bin/python -m bench.bench_sampling_step [--device cuda|cpu] [--size sd15|tiny] [--frames 16]
           [--latent 40 64] [--steps 8] [--cfg 7.5] [--rows plain "Video LDM" AnimateDiff]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROWS = ("plain", "Video LDM", "AnimateDiff")
REPO_ROOT = Path(__file__).resolve().parent.parent


def build(row: str, size: str, cpu: bool):
    """(MODEL, positive, negative) for one row: the random-weight SD1.x model, with the row's
    temporal layers applied."""
    import importlib

    import torch

    from devtools import tiny_bundles
    from devtools.comfy_in_process import init_comfy
    from devtools.public_layouts import animatediff_layout_state_dict

    pack = init_comfy(cpu=cpu)
    bundle_host = importlib.import_module(f"{pack.__name__}.host.bundle")
    patch = importlib.import_module(f"{pack.__name__}.host.temporal_adapter")
    importers = importlib.import_module(f"{pack.__name__}.videoldm_core.importers")
    spec = tiny_bundles.sd1_bench_spec(size)
    model, clip, _ = bundle_host.build_components(spec, tiny_bundles.random_bundle_state_dict(spec, seed=5), source="bench")
    torch.manual_seed(0)
    if row == "Video LDM":
        adapter_spec, module = patch.fresh_adapter_for_model(model)
        with torch.no_grad():   # off the zero-output start, as a trained adapter
            for p in module.parameters():
                p.copy_(torch.randn_like(p) * 0.02)
        model = patch.apply_adapter(model, patch.build_adapter_patcher(adapter_spec, module.state_dict(), "bench"), "bench")
    elif row == "AnimateDiff":
        cfg = spec.unet_config
        widths = [cfg["model_channels"] * m for m in cfg["channel_mult"]]
        adapter_spec, weights = importers.import_adapter(animatediff_layout_state_dict(widths, 32, True), {}, "mm_v2")
        model = patch.apply_adapter(model, patch.build_adapter_patcher(adapter_spec, weights, "mm_v2"), "mm_v2")
    positive = clip.encode_from_tokens_scheduled(clip.tokenize("a red car driving along a coastal road"))
    negative = clip.encode_from_tokens_scheduled(clip.tokenize(""))
    return model, positive, negative


def child(args) -> dict:
    import torch

    model, positive, negative = build(args.child, args.size, cpu=args.device == "cpu")
    import comfy.model_management as mm
    import comfy.sample

    from bench.common import peak_gib, reset_peak

    cuda = args.device == "cuda"
    height, width = args.latent
    latent = torch.zeros(args.frames, 4, height, width)
    noise = comfy.sample.prepare_noise(latent, 0)
    stamps = []

    def on_step(*_):
        if cuda:
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())

    def sample(steps):
        return comfy.sample.sample(model, noise, steps, args.cfg, "euler", "normal", positive, negative, latent,
                                   callback=on_step, disable_pbar=True, seed=0)

    with torch.inference_mode():
        sample(2)                       # warm-up: loads the model and the adapter onto the device
        before = reset_peak(cuda)
        stamps.clear()
        out = sample(args.steps)
    total = peak_gib(cuda)
    above = total - before
    intervals = [b - a for a, b in zip(stamps, stamps[1:])]
    return {"row": args.child, "seconds_per_step": statistics.median(intervals), "all": intervals,
            "peak_gib": total, "activations_gib": above, "dtype": str(model.model.get_dtype()),
            "device": str(mm.get_torch_device()), "finite": bool(torch.isfinite(out).all())}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--size", choices=("sd15", "tiny"), default="sd15")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--latent", type=int, nargs=2, default=[40, 64], metavar=("H", "W"), help="latent size (pixels / 8)")
    parser.add_argument("--steps", type=int, default=8, help="steps of the measured run (at least 2)")
    parser.add_argument("--cfg", type=float, default=7.5)
    parser.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS))
    parser.add_argument("--child", choices=ROWS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.steps < 2:
        parser.error("--steps must be at least 2: the first step, which pays the sampler's set-up, is not timed")
    if args.child:
        print(json.dumps(child(args)), flush=True)
        return

    from bench.common import print_table

    results = {}
    for row in args.rows:
        command = [sys.executable, "-m", "bench.bench_sampling_step", "--child", row, "--device", args.device, "--size",
                   args.size, "--frames", str(args.frames), "--latent", *map(str, args.latent), "--steps", str(args.steps),
                   "--cfg", str(args.cfg)]
        proc = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"{row}: failed ({proc.returncode})\n{proc.stderr[-3000:]}", file=sys.stderr, flush=True)
            continue
        results[row] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(json.dumps(results[row]), flush=True)
    if not results:
        sys.exit("no row ran")
    first = next(iter(results.values()))
    base = results.get("plain")
    h, w = args.latent
    print_table(
        f"One sampling step, {args.size} ({first['dtype']} on {first['device']}), {args.frames} frames at "
        f"{8 * h}x{8 * w} ({h}x{w} latent), cfg {args.cfg}, euler; median of {args.steps - 1} steps, each row in a fresh process, in-process ComfyUI (ModelPatcher, no DynamicVRAM)",
        [(row, f"{r['seconds_per_step']:.4f}", f"{r['seconds_per_step'] / base['seconds_per_step']:.2f}" if base else "-",
          f"{r['peak_gib']:.2f}", f"{r['activations_gib']:.2f}", str(r["finite"])) for row, r in results.items()],
        ("row", "s/step", "x plain", "peak GiB", "above weights GiB", "finite"))


if __name__ == "__main__":
    main()
