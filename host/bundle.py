"""Host side of model bundles (videoldm_core.bundle): build ComfyUI's own MODEL, CLIP and VAE
objects from a bundle spec, and make random-weight bundles in those exact architectures.

Nothing here guesses from weight shapes: the spec names the family and every size, so a small
UNet loads through the same `BaseModel`, `CLIP` and `VAE` classes as a full SD checkpoint.
"""

from __future__ import annotations

import functools
import math

import torch

import comfy.latent_formats
import comfy.ldm.models.autoencoder
import comfy.model_base
import comfy.model_management as mm
import comfy.model_patcher
import comfy.sd
import comfy.sd1_clip
import comfy.supported_models
import comfy.supported_models_base
import comfy.utils

from ..videoldm_core.bundle import COMPONENT_PREFIXES, BundleFormatError, BundleSpec, read_bundle_spec, split_components
from ..videoldm_core.families import SD1, SD_X4_UPSCALER, family_named
from ..videoldm_core.state_dict import check_weights

_MODEL_TYPES = {"eps": comfy.model_base.ModelType.EPS, "v": comfy.model_base.ModelType.V_PREDICTION}
_FAMILY_CONFIGS = {SD1.name: comfy.supported_models.SD15, SD_X4_UPSCALER.name: comfy.supported_models.SD_X4Upscaler}
_FAMILY_LATENT_FORMATS = {SD1.name: comfy.latent_formats.SD15, SD_X4_UPSCALER.name: comfy.latent_formats.SD_X4}


def bundle_model_config(spec: BundleSpec):
    """A model config of the spec's family that takes every UNet size from the spec.

    The stock configs overwrite the head layout with full-size defaults and guess the prediction
    type from weights; a bundle states both, so those hooks are replaced. The text encoder is
    always the SD1 CLIP class (sizes from the spec), whatever the family, so its keys are handled
    as SD1.x's; a stated latent scale factor replaces the family's.
    """
    model_type = _MODEL_TYPES[spec.prediction]
    latent_format = _FAMILY_LATENT_FORMATS[spec.family]
    if spec.latent_scale_factor is not None:
        latent_format = _with_scale_factor(latent_format, float(spec.latent_scale_factor))
    members = {
        "unet_extra_config": {},
        "latent_format": latent_format,
        "model_type": lambda self, state_dict, prefix="": model_type,
        "process_clip_state_dict": comfy.supported_models.SD15.process_clip_state_dict,
        "process_clip_state_dict_for_saving": comfy.supported_models.SD15.process_clip_state_dict_for_saving,
    }
    if family_named(spec.family).concat_image:  # the noise level of the low-res image is the class label
        members["unet_extra_config"] = {"num_classes": 1000}
        members["get_model"] = lambda self, state_dict, prefix="", device=None: comfy.model_base.SD_X4Upscaler(
            self, model_type=model_type, device=device)
    config_class = type("VideoLDMBundle" + _FAMILY_CONFIGS[spec.family].__name__, (_FAMILY_CONFIGS[spec.family],), members)
    unet_config = {"use_linear_in_transformer": False, "adm_in_channels": None, **spec.unet_config}
    return config_class(unet_config)


def _with_scale_factor(latent_format, scale_factor: float):
    """The family's latent format with another scale factor (ComfyUI sets it in __init__)."""

    def __init__(self):
        latent_format.__init__(self)
        self.scale_factor = scale_factor

    return type(f"VideoLDMBundle{latent_format.__name__}", (latent_format,), {"__init__": __init__})


def _clip_target(spec: BundleSpec):
    clip_model = functools.partial(comfy.sd1_clip.SDClipModel, return_projected_pooled=False,
                                   textmodel_json_config=dict(spec.text_encoder_config))
    target = comfy.supported_models_base.ClipTarget(comfy.sd1_clip.SD1Tokenizer, comfy.sd1_clip.SD1ClipModel)
    target.params = {"clip_model": clip_model}
    return target


def _vae_config(spec: BundleSpec) -> dict:
    return {"params": {"ddconfig": dict(spec.vae_config["ddconfig"]), "embed_dim": spec.vae_config["embed_dim"]}}


def _require_complete(component: str, module: torch.nn.Module, state_dict: dict, source: str, ignore_missing=()):
    check_weights(module.state_dict(), state_dict,
                  f"{source}: the {component} weights do not match the architecture in the bundle spec",
                  BundleFormatError, ignore_missing)


def build_components(spec: BundleSpec, state_dict: dict[str, torch.Tensor], source: str = "bundle"):
    """(MODEL, CLIP, VAE) as ComfyUI objects, loaded strictly from `state_dict`."""
    parts = split_components(state_dict, source)
    model_config = bundle_model_config(spec)

    unet_sd = comfy.utils.state_dict_prefix_replace(parts["unet"], {COMPONENT_PREFIXES["unet"]: ""}, filter_keys=True)
    parameters = comfy.utils.calculate_parameters(unet_sd)
    load_device = mm.get_torch_device()
    unet_dtype = mm.unet_dtype(model_params=parameters, supported_dtypes=list(model_config.supported_inference_dtypes),
                               weight_dtype=comfy.utils.weight_dtype(unet_sd))
    manual_cast_dtype = mm.unet_manual_cast(unet_dtype, load_device, model_config.supported_inference_dtypes)
    model_config.set_inference_dtype(unet_dtype, manual_cast_dtype, device=load_device)
    model = model_config.get_model(unet_sd, device=mm.unet_inital_load_device(parameters, unet_dtype))
    patcher = comfy.model_patcher.CoreModelPatcher(model, load_device=load_device, offload_device=mm.unet_offload_device())
    _require_complete("UNet", model.diffusion_model, unet_sd, source)
    model.diffusion_model.load_state_dict(unet_sd, strict=True, assign=patcher.is_dynamic())

    vae_sd = comfy.utils.state_dict_prefix_replace(parts["vae"], {COMPONENT_PREFIXES["vae"]: ""}, filter_keys=True)
    vae = comfy.sd.VAE(sd=vae_sd, config=_vae_config(spec))
    vae.downscale_ratio = vae.upscale_ratio = spec.vae_scale_factor  # ComfyUI assumes 8 when given a config
    _require_complete("VAE", vae.first_stage_model, vae_sd, source)

    clip_sd = model_config.process_clip_state_dict(dict(parts["text_encoder"]))
    clip = comfy.sd.CLIP(_clip_target(spec), tokenizer_data=clip_sd,
                         parameters=comfy.utils.calculate_parameters(clip_sd), state_dict=clip_sd)
    # SD checkpoints never store these two; the host leaves them at their defaults as well.
    _require_complete("text encoder", clip.cond_stage_model, clip_sd, source,
                      ignore_missing=(".logit_scale", ".text_projection.weight"))
    return patcher, clip, vae


def load_bundle(bundle_name: str):
    """(MODEL, CLIP, VAE) from a bundle in the checkpoints folder. The spec is read from the header
    first: a file that is not a bundle fails before any weights are read."""
    import folder_paths

    path = folder_paths.get_full_path_or_raise("checkpoints", bundle_name)
    spec = read_bundle_spec(path)
    return build_components(spec, comfy.utils.load_torch_file(path, safe_load=True), source=f"'{bundle_name}'")


def _random_init_(module: torch.nn.Module, generator: torch.Generator):
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
def random_bundle_state_dict(spec: BundleSpec, seed: int = 0) -> dict[str, torch.Tensor]:
    """A full bundle state dict with random weights in the spec's real ComfyUI architectures."""
    generator = torch.Generator().manual_seed(seed)
    model_config = bundle_model_config(spec)
    model_config.set_inference_dtype(torch.float32, None)
    base_model = model_config.get_model({}, device="cpu")
    vae = comfy.ldm.models.autoencoder.AutoencoderKL(**_vae_config(spec)["params"])
    target = _clip_target(spec)
    text_encoder = target.clip(device="cpu", dtype=torch.float32, **target.params)
    for module in (base_model.diffusion_model, vae, text_encoder):
        _random_init_(module, generator)
    state_dict = base_model.state_dict_for_saving(base_model.diffusion_model.state_dict(),
                                                  clip_state_dict=text_encoder.state_dict(),
                                                  vae_state_dict=vae.state_dict())
    state_dict.pop("v_pred", None)  # ComfyUI's marker for v models; a bundle states its prediction
    return state_dict


def tiny_sd1_spec(description: str = "random-weight tiny SD1.x bundle") -> BundleSpec:
    """An SD1.x-architecture LDM small enough to sample on two CPU cores in seconds.

    UNet: SD1.5's block structure (4 levels of 2 ResBlocks, transformers on the first 3 levels,
    so every SD1.5 slot exists) at widths 32/64/64/64; VAE: 4 levels (8x downsampling, as SD),
    4 latent channels; CLIP text encoder: width 64, 2 layers, SD's tokenizer and vocabulary.
    """
    return BundleSpec(
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


def tiny_x4_spec(description: str = "random-weight tiny SD x4 upscaler bundle") -> BundleSpec:
    """ComfyUI's SD x4 upscaler architecture (latent + low-res image in, noise level as the class
    label) at a small width: 4 levels of one ResBlock with a linear transformer each (self-attention
    on the lowest level only, as the full model), the tiny SD1.x text encoder, and a KL VAE with 3
    levels (4x downsampling, as the x4 upscaler's VAE)."""
    sd1 = tiny_sd1_spec()
    return BundleSpec(
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
