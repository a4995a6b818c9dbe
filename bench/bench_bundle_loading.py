"""Load Video LDM Bundle vs core Load Checkpoint on the same full-size SD1.5-shaped file.

A bundle keeps the SD checkpoint key layout, so core can read a full-size bundle too; this
measures what building from the stated spec costs against core's shape detection, and checks
that both give the same UNet output.

"ours" is the Load Video LDM Bundle node's whole path (host.bundle.load_bundle_file: the header, the
spec against the file's shapes on the meta device, every weight checked finite and in range, then
the build); each arm's peak is measured alone, the other's objects freed.

Usage: .venv/bin/python -m bench.bench_bundle_loading   (~2 GB scratch file, a few minutes on 2 cores)
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib
import json
import os
import tempfile
from pathlib import Path

import torch

from devtools.comfy_in_process import init_comfy

from devtools.process_memory import PeakRSS, rss_bytes

from .common import interleaved_medians, print_table
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


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.parse_args()   # no options: --help describes the run (core detects full SD shapes only)
    pack = init_comfy()
    bundle_host = importlib.import_module(f"{pack.__name__}.host.bundle")
    bundle = importlib.import_module(f"{pack.__name__}.videoldm_core.bundle")
    import comfy.sd

    spec = sd15_spec(bundle_host, bundle)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sd15_random.safetensors"
        state_dict = {k: v.half() for k, v in tiny_bundles.random_bundle_state_dict(spec, seed=0).items()}
        bundle.save_bundle(path, spec, state_dict)
        del state_dict
        parameters = sum(torch.Size(shape.shape).numel() for shape in bundle.open_bundle(path)[1].shapes.values())

        def ours():   # the node's path: header, shapes on the meta device, finite weights, then the build
            return bundle_host.load_bundle_file(path)

        def core():
            return comfy.sd.load_checkpoint_guess_config(str(path), output_vae=True, output_clip=True)[:3]

        medians = interleaved_medians({"ours": ours, "core": core})
        t_ours, t_core = medians["ours"], medians["core"]
        x, t = torch.randn(2, 4, 32, 32), torch.tensor([500.0, 500.0])
        context = torch.randn(2, 77, spec.unet_config["context_dim"])
        outputs, peaks = {}, {}
        for name, load in (("core", core), ("ours", ours)):   # one arm's objects alive at a time
            gc.collect()
            before = rss_bytes()
            with PeakRSS(os.getpid()) as peak:
                model = load()[0]
            peaks[name] = (peak.bytes - before) / 2**30
            with torch.inference_mode():
                outputs[name] = model.model.diffusion_model(x, t, context=context)
            del model
        print_table(f"Loading a {parameters / 1e9:.2f}B-parameter SD1.5-shaped bundle (fp16 on disk), median of 5, "
                    f"interleaved; peak: resident memory above the process before that one load ({peak.method})", [
            ("core Load Checkpoint", f"{t_core:.2f}", "1.00", f"{peaks['core']:.2f}"),
            ("Load Video LDM Bundle", f"{t_ours:.2f}", f"{t_ours / t_core:.2f}", f"{peaks['ours']:.2f}"),
        ], ("path", "seconds", "ratio vs core", "peak GiB"))
        y_ours, y_core = outputs["ours"], outputs["core"]
        print(f"UNet outputs identical: {torch.equal(y_ours, y_core)} (max |diff| {(y_ours - y_core).abs().max():.2e})")


if __name__ == "__main__":
    main()
