"""Load Video LDM Bundle vs core Load Checkpoint on the same full-size SD1.5-shaped file.

A bundle keeps the SD checkpoint key layout, so core can read a full-size bundle too; this
measures what building from the stated spec costs against core's shape detection, and checks
that both give the same UNet output.

"ours" is the Load Video LDM Bundle node's whole path (host.bundle.load_bundle_file: the header, the
spec against the file's shapes on the meta device, every weight checked finite and in range, then
the build). Each arm's peak is measured in a fresh process: measured one after the other in one
process, the second arm reuses heap the first freed (allocator.env keeps up to 4 GiB of it), so its
resident memory grows less and the figures compare the order, not the loaders.

Usage: .venv/bin/python -m bench.bench_bundle_loading   (~2 GB scratch file, a few minutes on 2 cores)
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from devtools.comfy_in_process import init_comfy

from devtools.process_memory import PeakRSS, rss_bytes

from .common import interleaved_medians, pack_allocator_env, print_table
from devtools import tiny_bundles


def sd15_spec(bundle_host, spec_module):
    tiny = tiny_bundles.tiny_sd1_spec()
    clip = json.loads((Path(importlib.import_module("comfy.sd1_clip").__file__).parent / "sd1_clip_config.json").read_text())
    return dataclasses.replace(
        tiny, description="random-weight SD1.5-shaped bundle (benchmark)",
        unet_config={"in_channels": 4, "out_channels": 4, "model_channels": 320, "channel_mult": [1, 2, 4, 4],
                     "num_res_blocks": [2, 2, 2, 2], "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
                     "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], "transformer_depth_middle": 1,
                     "context_dim": 768, "num_heads": 8, "num_head_channels": -1, "image_size": 32,
                     "use_spatial_transformer": True, "legacy": False},
        vae_config={"embed_dim": 4, "ddconfig": {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3,
                                                 "out_ch": 3, "ch": 128, "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2,
                                                 "attn_resolutions": [], "dropout": 0.0}},
        text_encoder_config={k: v for k, v in clip.items() if not k.startswith("_")})


def loaders(path):
    """{"ours": ..., "core": ...}: each loads the bundle at `path` and returns (MODEL, CLIP, VAE)."""
    pack = init_comfy()
    bundle_host = importlib.import_module(f"{pack.__name__}.host.bundle")
    import comfy.sd

    return {"ours": lambda: bundle_host.load_bundle_file(path),   # the node's path: header, shapes, finite, build
            "core": lambda: comfy.sd.load_checkpoint_guess_config(str(path), output_vae=True, output_clip=True)[:3]}


def child_peak(arm: str, path: str):
    """In a fresh process: one load by `arm`; prints the resident memory it added at its peak (GiB)
    and how that was read."""
    load = loaders(path)[arm]
    gc.collect()
    before = rss_bytes()
    with PeakRSS(os.getpid()) as peak:
        loaded = load()
    print(json.dumps({"peak_gib": (peak.bytes - before) / 2**30, "method": peak.method}))
    del loaded


def fresh_process_peak(arm: str, path) -> dict:
    proc = subprocess.run([sys.executable, "-m", "bench.bench_bundle_loading", "--child", arm, str(path)],
                          capture_output=True, text=True, env=pack_allocator_env())
    if proc.returncode != 0:
        raise SystemExit(f"{arm}: the peak run failed\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", nargs=2, metavar=("ARM", "FILE"), help=argparse.SUPPRESS)
    args = parser.parse_args()   # no options of its own: --help describes the run (core detects full SD shapes only)
    if args.child:
        return child_peak(*args.child)
    pack = init_comfy()
    bundle_host = importlib.import_module(f"{pack.__name__}.host.bundle")
    bundle = importlib.import_module(f"{pack.__name__}.videoldm_core.bundle")

    spec = sd15_spec(bundle_host, bundle)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sd15_random.safetensors"
        state_dict = {k: v.half() for k, v in tiny_bundles.random_bundle_state_dict(spec, seed=0).items()}
        bundle.save_bundle(path, spec, state_dict)
        del state_dict
        parameters = sum(torch.Size(shape.shape).numel() for shape in bundle.open_bundle(path)[1].shapes.values())

        peaks = {arm: fresh_process_peak(arm, path) for arm in ("core", "ours")}
        arms = loaders(path)
        medians = interleaved_medians(arms)
        t_ours, t_core = medians["ours"], medians["core"]
        x, t = torch.randn(2, 4, 32, 32), torch.tensor([500.0, 500.0])
        context = torch.randn(2, 77, spec.unet_config["context_dim"])
        outputs = {}
        for name, load in arms.items():   # one arm's objects alive at a time
            model = load()[0]
            with torch.inference_mode():
                outputs[name] = model.model.diffusion_model(x, t, context=context)
            del model
        method = peaks["ours"]["method"]
        peaks = {arm: peak["peak_gib"] for arm, peak in peaks.items()}
        print_table(f"Loading a {parameters / 1e9:.2f}B-parameter SD1.5-shaped bundle (fp16 on disk), median of 5, "
                    f"interleaved; peak: resident memory one load adds, each in a fresh process ({method})", [
            ("core Load Checkpoint", f"{t_core:.2f}", "1.00", f"{peaks['core']:.2f}"),
            ("Load Video LDM Bundle", f"{t_ours:.2f}", f"{t_ours / t_core:.2f}", f"{peaks['ours']:.2f}"),
        ], ("path", "seconds", "ratio vs core", "peak GiB"))
        y_ours, y_core = outputs["ours"], outputs["core"]
        print(f"UNet outputs identical: {torch.equal(y_ours, y_core)} (max |diff| {(y_ours - y_core).abs().max():.2e})")


if __name__ == "__main__":
    main()
