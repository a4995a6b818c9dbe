"""Writes the demo's random-weight models into a ComfyUI base directory:

- models/checkpoints/videoldm_demo_tiny.safetensors: a Video LDM bundle (real SD1.x architectures
  at tiny size: UNet with SD1.5's block structure, KL VAE, CLIP text encoder);
- models/checkpoints/videoldm_demo_x4.safetensors: a bundle in ComfyUI's SD x4 upscaler
  architecture at tiny size (UNet with the low-res image concatenated, 4x KL VAE, CLIP);
- models/temporal_adapters/videoldm_demo_motion_module.safetensors: a motion module for that UNet
  in AnimateDiff's original key layout (v2-style, with mid block), read by the pack's importer;
- models/temporal_adapters/videoldm_demo_temporal_decoder.safetensors: temporal layers for the
  bundle's VAE decoder (SVD's layout, small random weights), a temporal-decoder add-on;
- models/temporal_adapters/videoldm_demo_predictor.safetensors: a Video LDM-layout adapter with a
  context encoder (a prediction model for 0/1/2 context frames), small random weights;
- models/temporal_adapters/videoldm_demo_interpolator.safetensors: the same with the interpolation
  regime/augmentation embedding (an interpolation model), small random weights.

Usage: python -m devtools.make_demo_bundle [BASE_DIR]   (default: the scratch base directory)

Test fixtures, not examples: random weights show that a graph runs end to end, not a picture. The
example graphs in workflows/ run on the trained toy family the pack ships (toy/), which it registers
for ComfyUI's loaders itself; the server tests place these files beside it to test wiring, formats
and errors.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from . import paths, tiny_bundles
from .public_layouts import animatediff_layout_state_dict
from .comfy_in_process import init_comfy

DEMO_BUNDLE_NAME = "videoldm_demo_tiny.safetensors"
DEMO_X4_BUNDLE_NAME = "videoldm_demo_x4.safetensors"
DEMO_MOTION_MODULE_NAME = "videoldm_demo_motion_module.safetensors"
DEMO_TEMPORAL_DECODER_NAME = "videoldm_demo_temporal_decoder.safetensors"
DEMO_PREDICTOR_NAME = "videoldm_demo_predictor.safetensors"
DEMO_INTERPOLATOR_NAME = "videoldm_demo_interpolator.safetensors"
DEMO_SEED = 20230418  # arXiv 2304.08818


def make_demo_models(base_dir: Path) -> list[Path]:
    pack = init_comfy()
    bundle_host = importlib.import_module(f"{pack.__name__}.host.bundle")
    bundle = importlib.import_module(f"{pack.__name__}.videoldm_core.bundle")
    spec = tiny_bundles.tiny_sd1_spec(description="Video LDM demo: random weights, a wiring demo, not a picture")
    bundle_path = base_dir / "models" / "checkpoints" / DEMO_BUNDLE_NAME
    _write(bundle_path, lambda p: bundle.save_bundle(p, spec, tiny_bundles.random_bundle_state_dict(spec, seed=DEMO_SEED)))
    x4_spec = tiny_bundles.tiny_x4_spec(description="Video LDM demo x4 upscaler: random weights, a wiring demo")
    x4_path = base_dir / "models" / "checkpoints" / DEMO_X4_BUNDLE_NAME
    _write(x4_path, lambda p: bundle.save_bundle(p, x4_spec, tiny_bundles.random_bundle_state_dict(x4_spec, seed=DEMO_SEED)))
    widths = [spec.unet_config["model_channels"] * m for m in spec.unet_config["channel_mult"]]
    motion_path = base_dir / "models" / "temporal_adapters" / DEMO_MOTION_MODULE_NAME
    _write(motion_path, lambda p: save_file(animatediff_layout_state_dict(widths, seed=DEMO_SEED), str(p)))
    temporal_decoder = importlib.import_module(f"{pack.__name__}.videoldm_core.temporal_decoder")
    decoder_path = base_dir / "models" / "temporal_adapters" / DEMO_TEMPORAL_DECODER_NAME
    _write(decoder_path, lambda p: save_random_temporal_decoder(p, temporal_decoder, spec))
    predictor_path = base_dir / "models" / "temporal_adapters" / DEMO_PREDICTOR_NAME
    _write(predictor_path, lambda p: save_random_predictor(p, pack, bundle_host, spec))
    interpolator_path = base_dir / "models" / "temporal_adapters" / DEMO_INTERPOLATOR_NAME
    _write(interpolator_path, lambda p: save_random_predictor(p, pack, bundle_host, spec, interpolation=True))
    return [bundle_path, x4_path, motion_path, decoder_path, predictor_path, interpolator_path]


def save_random_predictor(path, pack, bundle_host, bundle_spec, seed=DEMO_SEED, std=0.02, interpolation=False):
    """A prediction adapter (context encoder for 0/1/2 frames) for the bundle's UNet, or with
    `interpolation` an interpolation adapter: fresh layers plus small noise."""
    patch = importlib.import_module(f"{pack.__name__}.host.temporal_adapter")
    adapter_format = importlib.import_module(f"{pack.__name__}.videoldm_core.temporal_adapter")
    model, _, _ = bundle_host.build_components(bundle_spec, tiny_bundles.random_bundle_state_dict(bundle_spec, seed=seed),
                                               source="demo")
    spec, module = patch.fresh_adapter_for_model(model, context_frames=(0, 1, 2), context_width=16, interpolation=interpolation)
    kind = "interpolation" if interpolation else "prediction"
    spec = adapter_format.AdapterSpec(**{**spec.__dict__, "description": f"Video LDM demo: random {kind} adapter"})
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * std)
    adapter_format.save_adapter(path, module, spec)


def save_random_temporal_decoder(path, temporal_decoder, bundle_spec, seed=DEMO_SEED, std=0.02):
    """A temporal-decoder add-on for the bundle's VAE: fresh (identity) layers plus small noise."""
    from comfy.ldm.modules.diffusionmodules.model import Decoder

    decoder = Decoder(**bundle_spec.vae_config["ddconfig"])
    spec = temporal_decoder.spec_for_decoder(decoder, description="Video LDM demo: random temporal decoder layers")
    module = temporal_decoder.TemporalDecoder(spec)
    generator = torch.Generator().manual_seed(seed)
    weights = {k: v + torch.randn(v.shape, generator=generator) * std for k, v in module.state_dict().items()}
    save_file(weights, str(path), metadata={temporal_decoder.TEMPORAL_DECODER_METADATA_KEY: spec.to_json()})


def _write(path: Path, write):
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".partial.safetensors")
    write(tmp)
    tmp.replace(path)


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else paths.base_dir()
    for written in make_demo_models(target):
        print(written)
