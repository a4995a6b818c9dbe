"""Random-weight files in the exact public layouts of the weights users own, under their public
names, for the recipe tests (tests/server/test_recipes.py): ComfyUI reads them the way it reads the
real files, so a recipe that runs on these runs the same graph on the real ones (pictures aside).

- `v1-5-pruned-emaonly.safetensors`: SD1.5 at full size (UNet, CLIP ViT-L text encoder, KL VAE
  under `model.diffusion_model.`, `cond_stage_model.transformer.`, `first_stage_model.`), the
  shapes taken from ComfyUI's own modules built on the meta device;
- `svd_xt.safetensors`: the first stage of an SVD checkpoint (image encoder, the decoder with its
  temporal layers, `first_stage_model.*`), the part Load Temporal VAE reads; the video UNet and the
  image conditioner (1.5B and 0.6B parameters the pack never reads from this file) are left out;
- `x4-upscaler-ema.safetensors`: the SD x4 upscaler at full size (UNet with the low-res image
  concatenated and the noise level as class label, OpenCLIP ViT-H text encoder, 4x KL VAE), in the
  original layout ComfyUI's own checkpoint saver writes;
- `sd_xl_base_1.0.safetensors`: SDXL base at full size (UNet, CLIP ViT-L and OpenCLIP ViT-bigG text
  encoders under `conditioner.embedders.{0,1}.`, its VAE), keys through ComfyUI's own SDXL
  converters;
- `AnimateLCM_sd15_t2v_lora.safetensors`: the spatial LoRA AnimateLCM's text-to-video model is
  used with, in the kohya layout AnimateLCM's own loader reads (`lora_unet_<diffusers name with
  underscores>.lora_down.weight` / `.lora_up.weight` / `.alpha`), rank 64 and alpha 8 as LCM-LoRA
  trains them, on the layers LCM-LoRA trains (attention projections, feed-forward, the
  transformers' proj_in/out, the resnets' convolutions and time projections, the resamplers);
- `v3_sd15_mm.ckpt`, `mm_sd_v15_v2.ckpt`, `AnimateLCM_sd15_t2v.ckpt` at SD1.5's widths and
  `mm_sdxl_v10_beta.ckpt` at SDXL's: motion modules, pickled state dicts as they are published
  (devtools.public_layouts).

Usage: python -m devtools.public_checkpoints MODELS_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from .unet_configs import SD15, SDXL

SD15_CHECKPOINT = "v1-5-pruned-emaonly.safetensors"
SDXL_CHECKPOINT = "sd_xl_base_1.0.safetensors"
SVD_CHECKPOINT = "svd_xt.safetensors"
X4_CHECKPOINT = "x4-upscaler-ema.safetensors"
ANIMATELCM_LORA = "AnimateLCM_sd15_t2v_lora.safetensors"
LORA_RANK, LORA_ALPHA = 64, 8.0
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1", "conv2",
                "conv_shortcut", "time_emb_proj", "downsamplers.0.conv", "upsamplers.0.conv")
X4_UNET = dict(SD15, in_channels=7, model_channels=256, channel_mult=[1, 2, 2, 4], num_res_blocks=[2, 2, 2, 2],
               transformer_depth=[0, 0, 1, 1, 1, 1, 1, 1], transformer_depth_output=[0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1],
               context_dim=1024, use_linear_in_transformer=True, disable_self_attentions=[True, True, True, False],
               num_classes=1000, num_heads=8, num_head_channels=-1)
SD15_VAE = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
            "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}
SD15_LEVEL_WIDTHS, SDXL_LEVEL_WIDTHS = [320, 640, 1280, 1280], [320, 640, 1280]
# file name: (devtools.public_layouts variant, the widths of its base family's UNet levels)
MOTION_MODULES = {"v3_sd15_mm.ckpt": ("v3", SD15_LEVEL_WIDTHS), "mm_sd_v15_v2.ckpt": ("v2", SD15_LEVEL_WIDTHS),
                  "AnimateLCM_sd15_t2v.ckpt": ("animatelcm", SD15_LEVEL_WIDTHS),
                  "mm_sdxl_v10_beta.ckpt": ("sdxl", SDXL_LEVEL_WIDTHS)}


def meta_shapes(build) -> dict[str, torch.Size]:
    """Every parameter and persistent buffer of the module `build()` makes, by name, built on the
    meta device (no memory)."""
    with torch.device("meta"):
        module = build()
    return {name: tensor.shape for name, tensor in module.state_dict().items()}


POOL = 2**24


def random_weights(shapes: dict[str, torch.Size], seed: int, std: float = 0.02,
                   kept: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """fp16 normal noise of `std` per tensor; norm and scale weights around 1 so activations keep
    their size; the tensors in `kept` (e.g. CLIP's position ids) as they are.

    The noise is one pool of 2^24 normal draws, each tensor read from it at its own random offset
    (wrapping around): drawing billions of fresh values took most of the two minutes these
    checkpoints cost a cold cache (CI), and no test needs values beyond the pool's period (larger
    than any single tensor here) to be independent."""
    generator = torch.Generator().manual_seed(seed)
    pool = (torch.randn(POOL, generator=generator) * std).to(torch.float16)
    out = {}
    for name, shape in shapes.items():
        if kept and name in kept:
            out[name] = kept[name]
            continue
        pieces, left, at = [], shape.numel(), int(torch.randint(POOL, (1,), generator=generator))
        while left:
            pieces.append(pool[at:at + left])
            left, at = left - pieces[-1].numel(), 0
        value = torch.cat(pieces).reshape(shape)   # a copy of its own size, never a view of the pool
        if name.endswith(".weight") and len(shape) == 1 and any(n in name for n in ("norm", "ln_", "layer_norm")):
            value = value + 1.0
        out[name] = value
    return out


def sd15_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    import comfy.ops
    import comfy.sd1_clip
    from comfy.ldm.models.autoencoder import AutoencoderKL
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    unet = meta_shapes(lambda: UNetModel(**SD15, operations=comfy.ops.disable_weight_init))
    clip = meta_shapes(lambda: comfy.sd1_clip.SDClipModel())
    vae = meta_shapes(lambda: AutoencoderKL(ddconfig=SD15_VAE, embed_dim=4))
    shapes = {**{f"model.diffusion_model.{k}": s for k, s in unet.items()},
              **{f"cond_stage_model.{k}": s for k, s in clip.items() if k.startswith("transformer.text_model.")},
              **{f"first_stage_model.{k}": s for k, s in vae.items()}}
    return random_weights(shapes, seed)


def animatelcm_lora_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """A LoRA over SD1.5's UNet in the kohya layout (see the module's docstring); layer names through
    ComfyUI's diffusers-to-original map, shapes from its UNet on the meta device."""
    import comfy.ops
    import comfy.utils
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    unet = meta_shapes(lambda: UNetModel(**SD15, operations=comfy.ops.disable_weight_init))
    shapes, alphas = {}, {}
    for diffusers, original in sorted(comfy.utils.unet_to_diffusers(dict(SD15)).items()):
        layer = diffusers.removesuffix(".weight")
        if layer == diffusers or original not in unet or not layer.endswith(LORA_TARGETS):
            continue
        out, inner, *kernel = unet[original]
        name = "lora_unet_" + layer.replace(".", "_")
        shapes[f"{name}.lora_down.weight"] = torch.Size((LORA_RANK, inner, *kernel))
        shapes[f"{name}.lora_up.weight"] = torch.Size((out, LORA_RANK, *[1] * len(kernel)))
        alphas[f"{name}.alpha"] = torch.tensor(LORA_ALPHA, dtype=torch.float16)
    return {**random_weights(shapes, seed, std=0.001), **alphas}


def x4_upscaler_shapes() -> dict[str, torch.Size]:
    """Shapes from ComfyUI's modules on the meta device, keys through ComfyUI's own converters to
    the checkpoint layout (`cond_stage_model.model.*` for the OpenCLIP text encoder)."""
    import comfy.ops
    import comfy.supported_models
    from comfy.ldm.models.autoencoder import AutoencoderKL
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    from comfy.text_encoders.sd2_clip import SD2ClipModel

    config = comfy.supported_models.SD_X4Upscaler(X4_UNET)
    with torch.device("meta"):
        unet = UNetModel(**X4_UNET, operations=comfy.ops.disable_weight_init).state_dict()
        clip = SD2ClipModel().state_dict()
        vae = AutoencoderKL(ddconfig=dict(SD15_VAE, ch_mult=[1, 2, 4]), embed_dim=4).state_dict()
    shapes = {**config.process_unet_state_dict_for_saving(unet), **config.process_clip_state_dict_for_saving(clip),
              **config.process_vae_state_dict_for_saving(vae)}
    return {k: v.shape for k, v in shapes.items()}


def sdxl_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """SDXL base in the layout of `sd_xl_base_1.0.safetensors`: shapes from ComfyUI's modules on the
    meta device, keys through ComfyUI's SDXL converters (the ones its checkpoint saver uses)."""
    import comfy.ops
    import comfy.sdxl_clip
    import comfy.supported_models
    from comfy.ldm.models.autoencoder import AutoencoderKL
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    config = comfy.supported_models.SDXL(SDXL)
    with torch.device("meta"):
        unet = UNetModel(**SDXL, operations=comfy.ops.disable_weight_init).state_dict()
        clip = comfy.sdxl_clip.SDXLClipModel(device="meta").state_dict()
        vae = AutoencoderKL(ddconfig=SD15_VAE, embed_dim=4).state_dict()
    tensors = {**config.process_unet_state_dict_for_saving(unet), **config.process_clip_state_dict_for_saving(clip),
               **config.process_vae_state_dict_for_saving(vae)}
    return random_weights({k: v.shape for k, v in tensors.items()}, seed,
                          kept={k: v for k, v in tensors.items() if not v.is_meta and not v.is_floating_point()})


def svd_first_stage_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    from comfy.ldm.modules.diffusionmodules.model import Encoder
    from comfy.ldm.modules.temporal_ae import VideoDecoder

    encoder = meta_shapes(lambda: Encoder(**SD15_VAE))
    decoder = meta_shapes(lambda: VideoDecoder(video_kernel_size=[3, 1, 1], alpha=0.0, **SD15_VAE))
    shapes = {**{f"first_stage_model.encoder.{k}": s for k, s in encoder.items()},
              **{f"first_stage_model.decoder.{k}": s for k, s in decoder.items()}}
    weights = random_weights(shapes, seed)
    for name in weights:   # SVD's decoder starts as the image decoder: its mixes lean to the spatial branch
        if name.endswith("mix_factor"):
            weights[name].fill_(2.0)
    return weights


def write_public_files(models: Path, seed: int = 0) -> list[Path]:
    """The files above in `models/checkpoints`, `models/loras` and `models/animatediff_models` (files
    already there are kept)."""
    from safetensors.torch import save_file

    from .public_layouts import VARIANTS, animatediff_state_dict

    written = []

    def write(path: Path, make, save):
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(path.name + ".partial")
            save(make(), partial)
            partial.replace(path)
        written.append(path)

    write(models / "checkpoints" / SD15_CHECKPOINT, lambda: sd15_state_dict(seed), lambda sd, p: save_file(sd, str(p)))
    write(models / "checkpoints" / SVD_CHECKPOINT, lambda: svd_first_stage_state_dict(seed), lambda sd, p: save_file(sd, str(p)))
    write(models / "checkpoints" / SDXL_CHECKPOINT, lambda: sdxl_state_dict(seed), lambda sd, p: save_file(sd, str(p)))
    write(models / "loras" / ANIMATELCM_LORA, lambda: animatelcm_lora_state_dict(seed), lambda sd, p: save_file(sd, str(p)))
    write(models / "checkpoints" / X4_CHECKPOINT, lambda: random_weights(x4_upscaler_shapes(), seed), lambda sd, p: save_file(sd, str(p)))
    for name, (variant, widths) in MOTION_MODULES.items():
        options = dict(VARIANTS[variant], widths=widths)
        write(models / "animatediff_models" / name,
              lambda: {k: v.to(torch.float16) for k, v in animatediff_state_dict(**options, seed=seed).items()},
              lambda sd, p: torch.save(sd, str(p)))
    return written


if __name__ == "__main__":
    from .comfy_in_process import init_comfy

    init_comfy()
    for path in write_public_files(Path(sys.argv[1])):
        print(path)
