"""Interpolate Keyframes at 8, 64 and 512 keyframes: seconds per output frame and the activation
peak of the interpolation, each measured in a fresh process.

Model: the tests' tiny SD1.x architecture (random weights) with a random interpolation adapter
(context encoder + regime embedding), 16x16 latent, windows of 5 keyframes (17 frames), one
Euler step, cfg 1, fp32 on CPU, after a warm-up. At a 16x16 latent the activations are ~0.1 GiB and
allocator noise shows; --latent 32 gives steadier ratios (the figures in docs/development.md).

Targets (issue 5): time per output frame flat within 10 %; peak at 512 keyframes within 1.15x of 64.

Usage: .venv/bin/python -m bench.bench_interpolation [--keyframes 8 64 512] [--latent 16] [--window 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch

from devtools.comfy_in_process import init_comfy

from .common import pack_allocator_env, print_table, step_peak_gib
from devtools import tiny_bundles


def child(keyframes: int, latent: int, window: int, repeats: int = 0) -> dict:
    import importlib

    pack = init_comfy()
    bundle_host = importlib.import_module(f"{pack.__name__}.host.bundle")
    patch = importlib.import_module(f"{pack.__name__}.host.temporal_adapter")
    node = importlib.import_module(f"{pack.__name__}.nodes.interpolation").InterpolateKeyframes
    spec = tiny_bundles.tiny_sd1_spec()
    model, clip, _ = bundle_host.build_components(spec, tiny_bundles.random_bundle_state_dict(spec, seed=5), source="bench")
    adapter_spec, module = patch.fresh_adapter_for_model(model, context_frames=(0, 1, 2), context_width=16, interpolation=True)
    torch.manual_seed(0)
    for p in module.parameters():
        torch.nn.init.normal_(p, std=0.02)
    model = patch.apply_adapter(model, patch.build_adapter_patcher(adapter_spec, module.state_dict(), source="bench"), "bench")
    positive = clip.encode_from_tokens_scheduled(clip.tokenize("a red square moving left"))
    negative = clip.encode_from_tokens_scheduled(clip.tokenize(""))

    def work(n):
        frames = torch.randn(n, 4, latent, latent, generator=torch.Generator().manual_seed(1))
        return node.execute(model, positive, negative, {"samples": frames}, "T-to-4T", True, 0.0, window, 0, 1, 1.0,
                            "euler", "normal", 2.0).result[0]["samples"]

    with torch.inference_mode():
        work(window)  # warm-up
        result = {}
        start = time.perf_counter()
        peak = step_peak_gib(lambda: result.setdefault("x", work(keyframes)))
        seconds = [time.perf_counter() - start]
        for _ in range(repeats):  # these shared machines vary by 20 % and more from run to run
            start = time.perf_counter()
            work(keyframes)
            seconds.append(time.perf_counter() - start)
        seconds = statistics.median(seconds)
    frames = result["x"].shape[0]
    return dict(keyframes=keyframes, frames=frames, seconds=seconds, per_frame=seconds / frames, peak_gib=peak)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keyframes", type=int, nargs="+", default=[8, 64, 512])
    parser.add_argument("--latent", type=int, default=16)
    parser.add_argument("--window", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=0, help="extra timed runs (median)")
    parser.add_argument("--child", type=int)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.latent, args.window, args.repeats)))
        return
    results = {}
    for n in args.keyframes:
        proc = subprocess.run([sys.executable, "-m", "bench.bench_interpolation", "--child", str(n), "--latent",
                               str(args.latent), "--window", str(args.window), "--repeats", str(args.repeats)],
                              capture_output=True, text=True, env=pack_allocator_env())
        if proc.returncode != 0:
            print(f"{n} keyframes failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
            continue
        results[n] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(results[n], flush=True)
    base_keyframes = 64 if 64 in results else next(iter(results))
    base = results[base_keyframes]
    rows = [(n, r["frames"], f"{r['per_frame'] * 1000:.1f}", f"{r['per_frame'] / base['per_frame']:.3f}x",
             f"{r['peak_gib']:.3f}", f"{r['peak_gib'] / base['peak_gib']:.2f}x") for n, r in results.items()]
    print_table(f"Interpolate Keyframes (tiny SD1.x, {args.latent}x{args.latent} latent, windows of {args.window}, 1 step, "
                f"cfg 1, CPU); ratios vs {base_keyframes} keyframes", rows,
                ("keyframes", "out frames", "ms/frame", "time ratio", "peak GiB", "peak ratio"))


if __name__ == "__main__":
    main()
