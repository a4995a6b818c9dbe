"""Random-weight bundles in ComfyUI's real SD1.x and SD x4 upscaler architectures, small enough to
sample on two CPU cores: fixtures for the tests, the wiring demo, the toy family's starting point and
the benchmarks. The pack itself never makes random weights; these go through its real bundle code
(host/bundle.py), imported under the pack's installed name."""

from __future__ import annotations

import importlib
import math

import torch

from videoldm_core.families import SD1, SD_X4_UPSCALER

from . import paths


def host_bundle():
    """The pack's host/bundle.py as ComfyUI imported it (ComfyUI's modules must be importable)."""
    return importlib.import_module(f"{paths.pack_module_name()}.host.bundle")


def random_init_(module: torch.nn.Module, generator: torch.Generator):
    """Deterministic random weights: unit-variance-preserving matrices, unit norms, zero biases.

    ComfyUI's layers skip initialisation (their weights start as uninitialised memory), so a
    random-weight model must be filled explicitly.
    """
    for name, p in module.state_dict().items():
        if not p.is_floating_point():
            continue
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "bias":
            p.zero_()
        elif p.ndim == 1:
            p.fill_(1.0)
        else:
            fan_in = math.prod(p.shape[1:])
            p.copy_(torch.randn(p.shape, generator=generator) / math.sqrt(fan_in))


@torch.no_grad()
def random_bundle_state_dict(spec, seed: int = 0) -> dict[str, torch.Tensor]:
    """A full bundle state dict with random weights in the spec's real ComfyUI architectures."""
    generator = torch.Generator().manual_seed(seed)
    import comfy.ldm.models.autoencoder

    host = host_bundle()
    model_config = host.bundle_model_config(spec)
    model_config.set_inference_dtype(torch.float32, None)
    base_model = model_config.get_model({}, device="cpu")
    vae = comfy.ldm.models.autoencoder.AutoencoderKL(**host._vae_config(spec)["params"])
    target = host._clip_target(spec)
    text_encoder = target.clip(device="cpu", dtype=torch.float32, **target.params)
    for module in (base_model.diffusion_model, vae, text_encoder):
        random_init_(module, generator)
    state_dict = base_model.state_dict_for_saving(base_model.diffusion_model.state_dict(),
                                                  clip_state_dict=text_encoder.state_dict(),
                                                  vae_state_dict=vae.state_dict())
    state_dict.pop("v_pred", None)  # ComfyUI's marker for v models; a bundle states its prediction
    return state_dict


def tiny_sd1_spec(description: str = "random-weight tiny SD1.x bundle"):
    """An SD1.x-architecture LDM small enough to sample on two CPU cores in seconds.

    UNet: SD1.5's block structure (4 levels of 2 ResBlocks, transformers on the first 3 levels,
    so every SD1.5 slot exists) at widths 32/64/64/64; VAE: 4 levels (8x downsampling, as SD),
    4 latent channels; CLIP text encoder: width 64, 2 layers, SD's tokenizer and vocabulary.
    """
    return host_bundle().BundleSpec(
        family=SD1.name,
        prediction="eps",
        description=description,
        unet_config={
            "in_channels": 4, "out_channels": 4, "model_channels": 32, "channel_mult": [1, 2, 2, 2],
            "num_res_blocks": [2, 2, 2, 2], "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
            "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], "transformer_depth_middle": 1,
            "context_dim": 64, "num_heads": 4, "num_head_channels": -1, "image_size": 32,
            "use_spatial_transformer": True, "legacy": False,
        },
        vae_config={
            "embed_dim": 4,
            "ddconfig": {"double_z": True, "z_channels": 4, "resolution": 64, "in_channels": 3, "out_ch": 3,
                         "ch": 32, "ch_mult": [1, 1, 2, 2], "num_res_blocks": 1, "attn_resolutions": [],
                         "dropout": 0.0},
        },
        text_encoder_config={
            "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
            "vocab_size": 49408, "max_position_embeddings": 77, "hidden_act": "quick_gelu",
            "layer_norm_eps": 1e-5, "projection_dim": 64, "bos_token_id": 0, "eos_token_id": 49407,
            "pad_token_id": 1, "model_type": "clip_text_model", "architectures": ["CLIPTextModel"],
        },
    )


def sd1_bench_spec(unet: str = "tiny"):
    """The tiny SD1.x spec, or with `unet="sd15"` SD1.5's full UNet shape (~860M parameters) with
    the tiny VAE and a tiny text encoder widened to SD1.5's context: benchmarks of the UNet, where
    the text encoder's width is all that has to match."""
    import dataclasses

    from . import unet_configs

    spec = tiny_sd1_spec()
    if unet == "tiny":
        return spec
    sd15 = dict(unet_configs.SD15)
    return dataclasses.replace(spec, unet_config=sd15,
                               text_encoder_config=dict(spec.text_encoder_config, hidden_size=sd15["context_dim"]))


def tiny_x4_spec(description: str = "random-weight tiny SD x4 upscaler bundle"):
    """ComfyUI's SD x4 upscaler architecture (latent + low-res image in, noise level as the class
    label) at a small width: 4 levels of one ResBlock with a linear transformer each (self-attention
    on the lowest level only, as the full model), the tiny SD1.x text encoder, and a KL VAE with 3
    levels (4x downsampling, as the x4 upscaler's VAE)."""
    sd1 = tiny_sd1_spec()
    return host_bundle().BundleSpec(
        family=SD_X4_UPSCALER.name,
        prediction="v",
        description=description,
        unet_config={
            "in_channels": 7, "out_channels": 4, "model_channels": 32, "channel_mult": [1, 2, 2, 2],
            "num_res_blocks": [1, 1, 1, 1], "transformer_depth": [1, 1, 1, 1], "transformer_depth_output": [1] * 8,
            "transformer_depth_middle": 1, "context_dim": 64, "num_heads": 4, "num_head_channels": -1,
            "disable_self_attentions": [True, True, True, False], "image_size": 32, "use_spatial_transformer": True,
            "legacy": False, "use_linear_in_transformer": True, "use_temporal_attention": False,
        },
        vae_config={**sd1.vae_config, "ddconfig": {**sd1.vae_config["ddconfig"], "ch_mult": [1, 1, 2]}},
        text_encoder_config=sd1.text_encoder_config,
    )
