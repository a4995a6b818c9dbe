"""Cost of one UNet step with temporal layers, side by side in one process:

  plain          the SD2.x-shaped spatial UNet on T frames (frames as the batch)
  strength 0     the same model through Apply Temporal Adapter at strength 0
  native SVD     ComfyUI's own video UNet (VideoResBlock / SpatialVideoTransformer), same weights
  Video LDM      the plain UNet + the pack's adapter holding exactly those temporal layers
  AnimateDiff    the plain UNet + an imported AnimateDiff-layout motion module (v2 shape)
  AD clip norms  the same module with AnimateDiff v1's norms: every ResBlock GroupNorm and the output
                 norm over the clip (host/clip_norms.py) instead of per frame

Targets (issue 3): Video LDM <= 1.05 x native SVD; strength 0 <= 1.02 x plain. Timings are
medians of interleaved repeats; peak memory is measured per row in a fresh subprocess (one step).

Usage: .venv/bin/python -m bench.bench_temporal_step [--size full|small] [--frames 16] [--latent 16] [--repeats 5]
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import subprocess
import sys

import torch

from devtools import unet_configs
from devtools.comfy_in_process import init_comfy

from .common import interleaved_medians, print_table, step_peak_gib

ROWS = ("plain", "strength 0", "native SVD", "Video LDM", "AnimateDiff", "AD clip norms")


def video_config(base):
    return dict(base, extra_ff_mix_layer=True, use_spatial_context=True, merge_strategy="learned_with_images",
                merge_factor=0.0, video_kernel_size=[3, 1, 1], use_temporal_resblock=True, use_temporal_attention=True,
                disable_temporal_crossattention=False)


def build(size: str):
    """{row: step function} sharing one set of spatial weights."""
    pack = init_comfy()
    import importlib

    import comfy.model_patcher
    import comfy.ops
    import comfy.supported_models as sm
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    patch = importlib.import_module(f"{pack.__name__}.host.temporal_adapter")
    importers = importlib.import_module(f"{pack.__name__}.videoldm_core.importers")
    from devtools.public_layouts import animatediff_layout_state_dict

    base = unet_configs.SD21 if size == "full" else unet_configs.tiny(unet_configs.SD21, width=128, context_dim=256, head_width=64)
    torch.manual_seed(0)
    native = UNetModel(**video_config(base), operations=comfy.ops.disable_weight_init).eval()
    with torch.no_grad():
        for p in native.parameters():
            p.copy_(torch.randn_like(p) * 0.02)
    state_dict = native.state_dict()
    temporal = (".time_stack.", ".time_mixer.", ".time_pos_embed.")

    model_config = sm.SD20(base)
    model_config.unet_config.update(num_heads=base["num_heads"], num_head_channels=base["num_head_channels"])
    model_config.set_inference_dtype(torch.float32, None)
    spatial = model_config.get_model({}, device="cpu")
    spatial.diffusion_model.load_state_dict({k: v for k, v in state_dict.items() if not any(t in k for t in temporal)},
                                            strict=True, assign=True)  # shares the native UNet's tensors
    plain = comfy.model_patcher.ModelPatcher(spatial, "cpu", "cpu")

    spec, weights = importers.import_adapter(state_dict, {}, "svd")
    videoldm = patch.apply_adapter(plain, patch.build_adapter_patcher(spec, weights, "svd"), "svd")
    zero = patch.apply_adapter(plain, patch.build_adapter_patcher(spec, weights, "svd"), "svd", strength=0.0)
    widths = [base["model_channels"] * m for m in base["channel_mult"]]
    ad_spec, ad_weights = importers.import_adapter(animatediff_layout_state_dict(widths, 32, True), {}, "mm_v2")
    ad_spec = dataclasses.replace(ad_spec, family="SD2.x")  # same maths; the base here is SD2.x-shaped
    animatediff = patch.apply_adapter(plain, patch.build_adapter_patcher(ad_spec, ad_weights, "mm"), "mm")
    clip_spec = dataclasses.replace(ad_spec, clip_norms=["resblock", "output"])
    clip_norms = patch.apply_adapter(plain, patch.build_adapter_patcher(clip_spec, ad_weights, "mm"), "mm",
                                     noise_schedule="model")

    def via(patcher):
        def step(x, t, c):
            options = dict(patcher.model_options["transformer_options"], cond_or_uncond=[0], wrappers=patcher.wrappers)
            return patcher.model.diffusion_model(x, t, context=c, transformer_options=options)
        return step

    rows = {"plain": via(plain), "strength 0": via(zero), "Video LDM": via(videoldm), "AnimateDiff": via(animatediff),
            "AD clip norms": via(clip_norms),
            "native SVD": lambda x, t, c: native(x, t, context=c, num_video_frames=x.shape[0], transformer_options={})}
    params = {"plain": sum(p.numel() for p in spatial.parameters()),
              "temporal": sum(v.numel() for v in weights.values()), "animatediff": sum(v.numel() for v in ad_weights.values())}
    return rows, params, base["context_dim"]


def inputs(frames, latent, context_dim):
    torch.manual_seed(1)
    return torch.randn(frames, 4, latent, latent), torch.full((frames,), 500.0), torch.randn(frames, 77, context_dim)


def one_row_peak(args, row):
    """Activation peak of one step of `row`, in a fresh process so rows do not share freed memory."""
    out = subprocess.run([sys.executable, "-m", "bench.bench_temporal_step", "--size", args.size, "--frames", str(args.frames),
                          "--latent", str(args.latent), "--peak-of", row], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"measuring {row} failed ({out.returncode}): {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=("full", "small"), default="full")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--latent", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--peak-of", choices=ROWS, help=argparse.SUPPRESS)
    args = parser.parse_args()

    rows, params, context_dim = build(args.size)
    x, t, c = inputs(args.frames, args.latent, context_dim)
    if args.peak_of:
        with torch.inference_mode():
            print(json.dumps(step_peak_gib(lambda: rows[args.peak_of](x, t, c))))
        return

    with torch.inference_mode():
        outputs = {name: fn(x, t, c) for name, fn in rows.items()}
        medians = interleaved_medians({name: (lambda fn=fn: fn(x, t, c)) for name, fn in rows.items()}, args.repeats)
    plain, svd = medians["plain"], medians["native SVD"]
    print_table(
        f"One UNet step, SD2.x-shaped ({args.size}: {params['plain'] / 1e6:.1f}M spatial, {params['temporal'] / 1e6:.1f}M "
        f"Video LDM temporal, {params['animatediff'] / 1e6:.1f}M AnimateDiff), {args.frames} frames at "
        f"{args.latent}x{args.latent} latent, fp32 CPU, median of {args.repeats} interleaved",
        [(name, f"{medians[name]:.3f}", f"{medians[name] / plain:.3f}", f"{medians[name] / svd:.3f}") for name in ROWS],
        ("path", "s/step", "x plain", "x native SVD"))
    print(f"\nVideo LDM vs native SVD: {medians['Video LDM'] / svd:.3f} (target <= 1.05); "
          f"strength 0 vs plain: {medians['strength 0'] / plain:.3f} (target <= 1.02); "
          f"clip-wide norms vs per-frame: {medians['AD clip norms'] / medians['AnimateDiff']:.3f}")
    print(f"outputs: Video LDM vs native SVD max |diff| {(outputs['Video LDM'] - outputs['native SVD']).abs().max():.2e}; "
          f"strength 0 identical to plain: {torch.equal(outputs['strength 0'], outputs['plain'])}", flush=True)

    del rows, outputs  # the per-row processes below need the memory
    gc.collect()
    peaks = {name: one_row_peak(args, name) for name in ROWS}
    print_table("Activation peak of one step (each row in a fresh process)",
                [(name, f"{peaks[name]:.3f}", f"{peaks[name] / peaks['plain']:.2f}") for name in ROWS],
                ("path", "GiB", "x plain"))

if __name__ == "__main__":
    main()
