"""Long videos three ways, at 16, 128 and 1024 frames: seconds per generated frame and the
sampling's activation peak, each measured in a fresh process.

- rollout: Extend Video with a prediction adapter (segments of 16 frames, 2 context frames,
  starting from one frame): one segment is sampled at a time;
- core windows: ComfyUI's Context Windows (Manual) (16 frames, overlap 4) with a Video LDM adapter;
- distance-limited: the whole video in one pass with temporal attention limited to 8 frames.

Model: the tests' tiny SD1.x architecture (random weights) at a 16x16 latent (128x128 pixels),
one Euler step, cfg 1, fp32 on CPU; the adapters are random Video LDM-layout adapters.

Targets (issue 4): peak at 1024 frames within 1.15x of 128; time per frame flat within 10 %.

The one-pass distance-limited run holds every frame's activations and a T x T attention mask per
position (8.8 GiB at 1024 frames of a 16x16 latent), so do not give it 1024 frames at --latent 32.

Usage: .venv/bin/python -m bench.bench_long_video [--frames 16 128 1024] [--methods rollout windows distance] [--latent 16]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import torch

from devtools.comfy_in_process import init_comfy

from .common import pack_allocator_env, print_table, step_peak_gib
from devtools import tiny_bundles

SEGMENT, CONTEXT, WINDOW, WINDOW_OVERLAP, DISTANCE, LATENT = 16, 2, 16, 4, 8, 16


def build(method: str):
    import importlib

    pack = init_comfy()
    bundle_host = importlib.import_module(f"{pack.__name__}.host.bundle")
    patch = importlib.import_module(f"{pack.__name__}.host.temporal_adapter")
    spec = tiny_bundles.tiny_sd1_spec()
    model, clip, _ = bundle_host.build_components(spec, tiny_bundles.random_bundle_state_dict(spec, seed=5), source="bench")
    adapter_spec, module = patch.fresh_adapter_for_model(model, context_frames=(0, 1, 2) if method == "rollout" else (),
                                                         context_width=16)
    torch.manual_seed(0)
    for p in module.parameters():
        torch.nn.init.normal_(p, std=0.02)
    adapter = patch.build_adapter_patcher(adapter_spec, module.state_dict(), source="bench")
    patched = patch.apply_adapter(model, adapter, "bench", attention_distance=DISTANCE if method == "distance" else None)
    if method == "windows":
        from comfy_extras.nodes_context_windows import ContextWindowsManualNode

        patched = ContextWindowsManualNode.execute(patched, context_length=WINDOW, context_overlap=WINDOW_OVERLAP,
                                                   context_schedule="standard_static", context_stride=1, closed_loop=False,
                                                   fuse_method="pyramid", dim=0, freenoise=False).result[0]
    positive = clip.encode_from_tokens_scheduled(clip.tokenize("a red square moving left"))
    negative = clip.encode_from_tokens_scheduled(clip.tokenize(""))
    return pack, patched, positive, negative


def segments_for(frames: int) -> int:
    """Segments so that 1 + (SEGMENT - 1) + (n - 1)(SEGMENT - CONTEXT) >= frames."""
    n, total = 1, SEGMENT
    while total < frames:
        n, total = n + 1, total + SEGMENT - CONTEXT
    return n


def child(method: str, frames: int) -> dict:
    import importlib

    pack, model, positive, negative = build(method)
    import comfy.sample

    torch.manual_seed(1)
    if method == "rollout":
        extend = importlib.import_module(f"{pack.__name__}.nodes.rollout").ExtendVideo
        first = torch.randn(1, 4, LATENT, LATENT)

        def work(frames=frames):
            return extend.execute(model, positive, negative, {"samples": first}, segments_for(frames), SEGMENT, CONTEXT,
                                  0, 1, 1.0, 1.0, "euler", "normal").result[0]["samples"]
    else:
        def work(frames=frames):
            latent = torch.zeros(frames, 4, LATENT, LATENT)
            return comfy.sample.sample(model, comfy.sample.prepare_noise(latent, 0), 1, 1.0, "euler", "normal",
                                       positive, negative, latent, disable_pbar=True, seed=0)

    out = {}
    with torch.inference_mode():
        work(SEGMENT)  # warm-up: model load, first-call allocations
        start = time.perf_counter()
        result = {}
        out["peak_gib"] = step_peak_gib(lambda: result.setdefault("x", work()))
        out["seconds"] = time.perf_counter() - start
    generated = result["x"].shape[0] - (1 if method == "rollout" else 0)
    out.update(frames=result["x"].shape[0], generated=generated, per_frame=out["seconds"] / generated)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--frames", type=int, nargs="+", default=[16, 128, 1024])
    parser.add_argument("--methods", nargs="+", default=["rollout", "windows", "distance"])
    parser.add_argument("--latent", type=int, default=16, help="latent height and width (pixels / 8)")
    parser.add_argument("--child", nargs=2, metavar=("METHOD", "FRAMES"))
    args = parser.parse_args(argv)
    global LATENT
    LATENT = args.latent
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]))))
        return
    results = {}
    for method in args.methods:
        for frames in args.frames:
            proc = subprocess.run([sys.executable, "-m", "bench.bench_long_video", "--latent", str(LATENT), "--child",
                                   method, str(frames)],
                                  capture_output=True, text=True, env=pack_allocator_env())
            if proc.returncode != 0:
                results[method, frames] = None
                print(f"{method} {frames}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
                continue
            results[method, frames] = json.loads(proc.stdout.strip().splitlines()[-1])
            print(method, frames, results[method, frames], flush=True)
    rows = []
    base_frames = args.frames[1] if len(args.frames) > 1 else args.frames[0]
    for method in args.methods:
        base = results.get((method, base_frames))
        for frames in args.frames:
            r = results.get((method, frames))
            if r is None:
                rows.append((method, frames, "failed", "", "", ""))
                continue
            rows.append((method, r["frames"], f"{r['per_frame'] * 1000:.1f}", f"{r['per_frame'] / base['per_frame']:.3f}x" if base else "",
                         f"{r['peak_gib']:.3f}", f"{r['peak_gib'] / base['peak_gib']:.2f}x" if base else ""))
    print_table(f"Long videos (tiny SD1.x, {LATENT}x{LATENT} latent, 1 step, cfg 1, CPU); ratios vs the {base_frames}-frame run",
                rows, ("method", "frames", "ms/frame", "time ratio", "peak GiB", "peak ratio"))


if __name__ == "__main__":
    main()
