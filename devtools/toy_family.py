"""The toy model family: every model of the Video LDM cascade, trained from seeds by the pack's own
trainer (train.py) on synthetic moving shapes, so the whole cascade runs with no download.

Stages, each one train.py run on the output of the ones before (the paper's order):
  1. vae           the KL autoencoder (4x, shared by the keyframe model and the upscaler)
  2. image         the keyframe image LDM's UNet on single 64x64 frames (captions: "red square moving left")
  3. x4-image      the x4 upscaler's UNet on patches of 256x256 frames with their 64x64 versions
  4. predictor     temporal layers with a context encoder (0/1/2 context frames; 0 is the plain video
                   model) on keyframes at 1.875 fps
  5. interpolator  temporal layers for keyframe interpolation, both regimes (T→4T, 4T→16T): 1.875 →
                   7.5 → 30 fps
  6. decoder       the VAE decoder's temporal layers (L1 + frame-difference L1)
  7. x4-temporal   the x4 upscaler's temporal layers
Every spatial weight is frozen after its own stage. The results go to `--out` in fp16, with
provenance.json (settings, seconds per stage, sizes).

Usage: python -m devtools.toy_family [--out toy] [--work .scratch/toy-run] [--shards] [--quick]
(--quick: a few steps per stage on a few clips, to check the chain, not to make models; --shards:
the predictor and x4-temporal stages stream their clips from WebDataset shards of the same folders,
the path of data.shards, instead of encoding the folders once.)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from . import paths, tiny_bundles
from .comfy_in_process import init_comfy

SEED = 20230418  # arXiv 2304.08818
SIDE, FPS = 64, 30.0          # keyframe-model resolution; the source frame rate of every clip
KEYFRAME_FPS = FPS / 16       # the keyframe model runs at 1.875 fps; interpolation twice makes 30 fps from it

# Sizes chosen so the family fits in 25 MB of fp16: a frozen random CLIP of width 16 (its 49,408-token
# embedding is most of it), UNets of 3 levels at widths 32/32/64, the SD1.5 block structure otherwise.
TEXT_ENCODER = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                "vocab_size": 49408, "max_position_embeddings": 77, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
                "projection_dim": 16, "bos_token_id": 0, "eos_token_id": 49407, "pad_token_id": 1,
                "model_type": "clip_text_model", "architectures": ["CLIPTextModel"]}
VAE = {"embed_dim": 4, "ddconfig": {"double_z": True, "z_channels": 4, "resolution": 64, "in_channels": 3, "out_ch": 3,
                                    "ch": 32, "ch_mult": [1, 2, 2], "num_res_blocks": 1, "attn_resolutions": [],
                                    "dropout": 0.0}}
BASE_UNET = {"in_channels": 4, "out_channels": 4, "model_channels": 32, "channel_mult": [1, 1, 2],
             "num_res_blocks": [2, 2, 2], "transformer_depth": [1, 1, 1, 1, 1, 1],
             "transformer_depth_output": [1] * 9, "transformer_depth_middle": 1,
             "context_dim": 16, "num_heads": 4, "num_head_channels": -1, "image_size": 16,
             "use_spatial_transformer": True, "legacy": False}
X4_UNET = {"in_channels": 7, "out_channels": 4, "model_channels": 32, "channel_mult": [1, 1, 2],
           "num_res_blocks": [1, 1, 1], "transformer_depth": [1, 1, 1], "transformer_depth_output": [1] * 6,
           "transformer_depth_middle": 1, "context_dim": 16, "num_heads": 4, "num_head_channels": -1,
           "disable_self_attentions": [True, True, False], "image_size": 64, "use_spatial_transformer": True,
           "legacy": False, "use_linear_in_transformer": True, "use_temporal_attention": False}

NAMES = {"base": "videoldm_toy.safetensors", "x4": "videoldm_toy_x4.safetensors",
         "predictor": "videoldm_toy_predictor.safetensors", "interpolator": "videoldm_toy_interpolator.safetensors",
         "decoder": "videoldm_toy_temporal_decoder.safetensors", "x4-temporal": "videoldm_toy_x4_temporal.safetensors"}

# (steps, clips per step, learning rate) per stage; --quick runs 2 steps of 2 clips. Sized for two
# CPU cores (about 70 minutes in all, measured per stage in provenance.json); a GPU runs it in minutes.
STEPS = {"vae": (600, 4, 1e-3), "image": (1200, 8, 1e-3), "x4-image": (1200, 4, 1e-3), "predictor": (800, 2, 5e-4),
         "interpolator": (500, 2, 5e-4), "decoder": (400, 2, 1e-3), "x4-temporal": (800, 2, 5e-4)}


# where each file lies in the family's folder (toy/): one subfolder per kind, the folder keys the
# pack registers it under (host/model_folders.py), so each loader lists only what it can read
FOLDERS = {"base": "bundles", "x4": "bundles", "predictor": "temporal_adapters", "interpolator": "temporal_adapters",
           "decoder": "temporal_decoders", "x4-temporal": "temporal_adapters"}


def family_file(family: Path, key: str) -> Path:
    return family / FOLDERS[key] / NAMES[key]


def ema_decay(steps: int) -> float:
    """EMA averaging over about the last tenth of a run (the trainer warms the decay up as sgm does;
    the committed family was trained before it did, when the EMA started from the initial weights)."""
    return min(0.999, 1.0 - 10.0 / steps)


def specs():
    init_comfy()
    from videoldm_core.bundle import BundleSpec

    base = BundleSpec(family="SD1.x", prediction="eps", unet_config=BASE_UNET, vae_config=VAE,
                      text_encoder_config=TEXT_ENCODER,
                      description="Video LDM toy keyframe model (64x64 moving shapes), trained by devtools.toy_family")
    x4 = BundleSpec(family="SD-x4-upscaler", prediction="v", unet_config=X4_UNET, vae_config=VAE,
                    text_encoder_config=TEXT_ENCODER,
                    description="Video LDM toy x4 upscaler (64 -> 256 moving shapes), trained by devtools.toy_family")
    return base, x4


def write_data(work: Path, quick: bool) -> dict[str, Path]:
    from devtools.synthetic_data import write_dataset

    folders = {"clips": work / "clips", "clips_x4": work / "clips_x4", "keyframes": work / "keyframes"}
    if not (folders["clips"] / "captions.json").exists():
        write_dataset(folders["clips"], 8 if quick else 512, seed=SEED, frames=48, height=SIDE, width=SIDE, fps=FPS)
    if not (folders["clips_x4"] / "captions.json").exists():
        write_dataset(folders["clips_x4"], 4 if quick else 128, seed=SEED + 1, frames=16, height=SIDE, width=SIDE,
                      fps=FPS, scale=4)
    if not (folders["keyframes"] / "captions.json").exists():   # the same kind of scenes, rendered at 1.875 fps
        write_dataset(folders["keyframes"], 8 if quick else 512, seed=SEED + 2, frames=12, height=SIDE, width=SIDE,
                      fps=KEYFRAME_FPS)
    return folders


def initial_bundles(work: Path) -> tuple[Path, Path]:
    """Random-weight bundles from the seed (the text encoder stays as drawn: a frozen random CLIP)."""
    init_comfy()
    from videoldm_core.bundle import save_bundle

    base_spec, x4_spec = specs()
    out = work / "init"
    out.mkdir(parents=True, exist_ok=True)
    base, x4 = out / "base.safetensors", out / "x4.safetensors"
    if not base.exists():
        base_sd = tiny_bundles.random_bundle_state_dict(base_spec, seed=SEED)
        save_bundle(base, base_spec, base_sd)
        x4_sd = tiny_bundles.random_bundle_state_dict(x4_spec, seed=SEED + 1)
        # one text encoder for the family: the x4 model reads the same prompts
        x4_sd.update({k: v for k, v in base_sd.items() if k.startswith("cond_stage_model.")})
        save_bundle(x4, x4_spec, x4_sd)
    return base, x4


def stage_config(name: str, checkpoint: Path, output: Path, data: dict, quick: bool, **extra) -> dict:
    steps, batch, lr = STEPS[name]
    if quick:
        steps, batch = 2, 2
    return {"checkpoint": str(checkpoint), "output": str(output), "prompt": "", "resume": True, "data": data,
            "train": {"steps": steps, "batch_size": batch, "lr": lr, "warmup": min(100, steps // 10), "grad_clip": 1.0,
                      "ema_decay": None if quick else ema_decay(steps), "checkpoint_every": 250, "seed": SEED},
            **extra}


def as_shards(data: dict, work: Path, name: str) -> dict:
    """`data` read as streamed WebDataset shards of its folder (written once, 2 clips a shard, the
    way `train.py --make-shards` writes them) instead of the folder and its latent cache."""
    from videoldm_core.training.shards import write_shards

    target = work / "shards" / name
    if not (target / "done").exists():
        write_shards(data["folder"], str(target / "clips-%06d.tar"), clips_per_shard=2)
        (target / "done").touch()
    kept = {k: v for k, v in data.items() if k not in ("folder", "cache")}
    return {**kept, "shards": sorted(str(p) for p in target.glob("clips-*.tar")), "workers": 1}


def run_stage(name: str, config: dict, work: Path, log: dict) -> Path:
    output = Path(config["output"])
    done = output / "done.json"
    if done.exists():
        log[name] = json.loads(done.read_text())
        print(f"[toy] {name}: done before ({log[name]['seconds']:.0f} s)", file=sys.stderr)
        return output
    path = work / f"{name}.json"
    path.write_text(json.dumps(config, indent=1))
    print(f"[toy] {name}: training ({config['train']['steps']} steps)", file=sys.stderr, flush=True)
    start = time.monotonic()
    env = {**os.environ, "COMFYUI_DIR": str(paths.comfyui_dir())}
    run = subprocess.run([sys.executable, str(paths.REPO_ROOT / "train.py"), "--config", str(path)], env=env,
                         text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output.mkdir(parents=True, exist_ok=True)
    (output / "train.log").write_text(run.stdout)
    if run.returncode != 0:
        raise SystemExit(f"[toy] stage {name} failed:\n{run.stdout[-4000:]}")
    log[name] = {"seconds": time.monotonic() - start, "steps": config["train"]["steps"]}
    done.write_text(json.dumps(log[name]))
    return output


def with_vae(bundle: Path, trained: Path, target: Path):
    """`bundle` with the VAE weights and latent scale factor of the bundle `trained`."""
    import dataclasses

    from videoldm_core.bundle import read_bundle_spec, save_bundle

    spec, source = read_bundle_spec(bundle), read_bundle_spec(trained)
    state, vae = load_file(str(bundle)), load_file(str(trained))
    state.update({k: v for k, v in vae.items() if k.startswith("first_stage_model.")})
    save_bundle(target, dataclasses.replace(spec, vae_config=source.vae_config), state)


def to_half(source: Path, target: Path):
    """fp16 copy of a safetensors file, metadata kept."""
    with safe_open(str(source), framework="pt") as f:
        metadata = f.metadata() or {}
    weights = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in load_file(str(source)).items()}
    save_file(weights, str(target), metadata=metadata)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(paths.REPO_ROOT / "toy"))
    parser.add_argument("--work", default=str(paths.REPO_ROOT / ".scratch" / "toy-run"))
    parser.add_argument("--quick", action="store_true", help="a few steps per stage, to check the chain")
    parser.add_argument("--shards", action="store_true",
                        help="predictor and x4-temporal stream their clips from shards of the same folders")
    args = parser.parse_args(argv)
    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    folders = write_data(work, args.quick)
    base, x4 = initial_bundles(work)
    log = {}
    clips = {"folder": str(folders["clips"]), "width": SIDE, "height": SIDE, "captions": True, "cache": str(work / "cache")}
    clips_x4 = {"folder": str(folders["clips_x4"]), "width": 4 * SIDE, "height": 4 * SIDE, "captions": True,
                "cache": str(work / "cache_x4")}
    keyframes = {**clips, "folder": str(folders["keyframes"]), "cache": str(work / "cache_keyframes")}
    streamed = ["predictor", "x4-temporal"] if args.shards else []

    def temporal_data(name: str, data: dict) -> dict:
        return as_shards(data, work, name) if name in streamed else data

    vae = run_stage("vae", stage_config("vae", base, work / "vae", {**clips, "frames": 2, "fps": None}, args.quick,
                                        mode="vae"), work, log)
    with_vae(x4, vae / "bundle.safetensors", work / "x4_with_vae.safetensors")
    image = run_stage("image", stage_config("image", vae / "bundle.safetensors", work / "image",
                                            {**clips, "frames": 2, "fps": None}, args.quick, mode="image"), work, log)
    x4_image = run_stage("x4-image", stage_config("x4-image", work / "x4_with_vae.safetensors", work / "x4-image",
                                                  {**clips_x4, "frames": 2, "fps": None}, args.quick, mode="image",
                                                  image={"patch": 16}), work, log)
    keyframe_model = image / "bundle.safetensors"
    predictor = run_stage("predictor", stage_config(
        "predictor", keyframe_model, work / "predictor", temporal_data("predictor", {**keyframes, "frames": 8, "fps": None}),
        args.quick,
        mode="prediction", adapter={"context_frames": [0, 1, 2], "context_width": 32}), work, log)
    interpolator = run_stage("interpolator", stage_config(
        "interpolator", keyframe_model, work / "interpolator", {**clips, "frames": 5, "fps": FPS / 4}, args.quick,
        mode="interpolation", adapter={"context_frames": [0, 1, 2], "context_width": 32, "regimes": [0, 1]}), work, log)
    decoder = run_stage("decoder", stage_config(
        "decoder", keyframe_model, work / "decoder", {**clips, "frames": 8, "fps": FPS}, args.quick, mode="decoder",
        # no discriminator: at this size and length it hurt (at train.py's weight 0.1 the L1 doubled within
        # 50 steps of it coming on; at 0.01 it stayed but flicker grew past the image decoder's, as it did
        # with L1 alone); the flicker term does directly what the video discriminator is there for
        decoder={"adversarial_weight": 0.0, "temporal_weight": 5.0}), work, log)
    x4_temporal = run_stage("x4-temporal", stage_config(
        "x4-temporal", x4_image / "bundle.safetensors", work / "x4-temporal",
        temporal_data("x4-temporal", {**clips_x4, "frames": 8, "fps": FPS}), args.quick, mode="upscaler",
        adapter={"patch": 16}), work, log)

    out.mkdir(parents=True, exist_ok=True)
    results = {"base": keyframe_model, "x4": x4_image / "bundle.safetensors",
               "predictor": predictor / "adapter.safetensors", "interpolator": interpolator / "adapter.safetensors",
               "decoder": decoder / "temporal_decoder.safetensors", "x4-temporal": x4_temporal / "adapter.safetensors"}
    sizes = {}
    for key, source in results.items():
        family_file(out, key).parent.mkdir(parents=True, exist_ok=True)
        to_half(source, family_file(out, key))
        sizes[NAMES[key]] = family_file(out, key).stat().st_size
    provenance = {"command": "python -m devtools.toy_family" + (" --shards" if args.shards else "") +
                             (" --quick" if args.quick else ""), "seed": SEED, "streamed": streamed,
                  "torch": torch.__version__, "threads": torch.get_num_threads(), "stages": log, "bytes": sizes,
                  "total_bytes": sum(sizes.values()),
                  # training time over all stages (a resumed run's stages keep the seconds of the run that made them)
                  "seconds": sum(stage["seconds"] for stage in log.values()),
                  "this_run_seconds": time.monotonic() - started}
    (out / "provenance.json").write_text(json.dumps(provenance, indent=1))
    print(json.dumps(provenance, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
