"""Host side of model bundles (videoldm_core.bundle): build ComfyUI's own MODEL, CLIP and VAE
objects from a bundle spec. (Random-weight bundles for tests live in devtools/tiny_bundles.py.)

Nothing here guesses from weight shapes: the spec names the family and every size, so a small
UNet loads through the same `BaseModel`, `CLIP` and `VAE` classes as a full SD checkpoint.
"""

from __future__ import annotations

import functools

import torch

import comfy.latent_formats
import comfy.model_base
import comfy.model_management as mm
import comfy.model_patcher
import comfy.ops
import comfy.sd
import comfy.sd1_clip
import comfy.supported_models
import comfy.supported_models_base
import comfy.utils

from ..videoldm_core.bundle import (COMPONENT_PREFIXES, BundleFormatError, BundleSpec, check_stated_sizes, open_bundle,
                                    split_components)
from ..videoldm_core.families import SD1, SD_X4_UPSCALER, family_named
from ..videoldm_core.state_dict import check_weights, loadable_shapes
from ..videoldm_core.weights_file import WeightsFile, build_on_meta, check_range
from .model_folders import BUNDLES, full_path

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
    check_weights(loadable_shapes(module), state_dict,
                  f"{source}: the {component} weights do not match the architecture in the bundle spec",
                  BundleFormatError, ignore_missing)


def build_model(spec: BundleSpec, unet_part: dict[str, torch.Tensor], source: str = "bundle",
                disable_dynamic: bool = False, dtype: torch.dtype | None = None):
    """The MODEL, loaded strictly from the bundle's UNet tensors (full keys). `disable_dynamic`: in
    core's legacy ModelPatcher even where the server enables DynamicVRAM, as core's loaders take it.
    `dtype`: the UNet's weights in it (a training run's precision), not the device's default."""
    model_config = bundle_model_config(spec)
    # core's prefix replace pops the keys it moves: it is given a copy, so the part keeps the file's keys
    unet_sd = comfy.utils.state_dict_prefix_replace(dict(unet_part), {COMPONENT_PREFIXES["unet"]: ""}, filter_keys=True)
    parameters = comfy.utils.calculate_parameters(unet_sd)
    load_device = mm.get_torch_device()
    unet_dtype = dtype or mm.unet_dtype(model_params=parameters,
                                        supported_dtypes=list(model_config.supported_inference_dtypes),
                                        weight_dtype=comfy.utils.weight_dtype(unet_sd))
    check_range(unet_part, unet_dtype, source, BundleFormatError)   # named by the file's keys
    manual_cast_dtype = mm.unet_manual_cast(unet_dtype, load_device, model_config.supported_inference_dtypes)
    model_config.set_inference_dtype(unet_dtype, manual_cast_dtype, device=load_device)
    model = model_config.get_model(unet_sd, device=mm.unet_inital_load_device(parameters, unet_dtype))
    patcher_class = comfy.model_patcher.ModelPatcher if disable_dynamic else comfy.model_patcher.CoreModelPatcher
    patcher = patcher_class(model, load_device=load_device, offload_device=mm.unet_offload_device())
    _require_complete("UNet", model.diffusion_model, unet_sd, source)
    model.diffusion_model.load_state_dict(unet_sd, strict=True, assign=patcher.is_dynamic())
    return patcher


def build_components(spec: BundleSpec, state_dict: dict[str, torch.Tensor], source: str = "bundle",
                     unet_dtype: torch.dtype | None = None, vae_dtype: torch.dtype | None = None):
    """(MODEL, CLIP, VAE) as ComfyUI objects, loaded strictly from `state_dict`; the UNet's weights in
    `unet_dtype` and the VAE's in `vae_dtype` when given (else the device's defaults, as core's)."""
    parts = split_components(state_dict, source)
    model_config = bundle_model_config(spec)
    patcher = build_model(spec, parts["unet"], source, dtype=unet_dtype)

    vae_sd = comfy.utils.state_dict_prefix_replace(dict(parts["vae"]), {COMPONENT_PREFIXES["vae"]: ""}, filter_keys=True)
    vae = comfy.sd.VAE(sd=vae_sd, config=_vae_config(spec), dtype=vae_dtype)
    vae.downscale_ratio = vae.upscale_ratio = spec.vae_scale_factor  # ComfyUI assumes 8 when given a config
    _require_complete("VAE", vae.first_stage_model, vae_sd, source)
    check_range(parts["vae"], vae.vae_dtype, source, BundleFormatError)

    clip_sd = model_config.process_clip_state_dict(dict(parts["text_encoder"]))
    clip = comfy.sd.CLIP(_clip_target(spec), tokenizer_data=clip_sd,
                         parameters=comfy.utils.calculate_parameters(clip_sd), state_dict=clip_sd)
    # SD checkpoints never store these two; the host leaves them at their defaults as well.
    _require_complete("text encoder", clip.cond_stage_model, clip_sd, source,
                      ignore_missing=(".logit_scale", ".text_projection.weight"))
    # ComfyUI keeps the text encoder in float16 even on CPU: a weight of 1e6 would turn every cond infinite
    check_range(parts["text_encoder"], narrowest_dtype(clip.cond_stage_model), source, BundleFormatError)
    return patcher, clip, vae


def narrowest_dtype(module: torch.nn.Module) -> torch.dtype:
    """The floating dtype of smallest range among a module's parameters (CLIP's weights in float16
    beside its float32 logit scale): what every weight must fit."""
    return min({p.dtype for p in module.parameters() if p.is_floating_point()}, key=lambda d: torch.finfo(d).max)


def check_bundle_file(spec: BundleSpec, file: WeightsFile):
    """Each component the spec describes, built with ComfyUI's own classes on the meta device,
    against the file's shapes: a spec that contradicts its weights (a vocabulary of 40M beside a
    49,408-row embedding, 24,000 channels in a 1 kB file) is refused before anything is allocated."""
    from comfy.ldm.models.autoencoder import AutoencoderKL
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    check_stated_sizes(spec, file.shapes, file.source)
    parts = split_components(file.shapes, file.source)
    model_config = bundle_model_config(spec)
    unet_config = {k: v for k, v in model_config.unet_config.items() if k != "dtype"}
    target = _clip_target(spec)
    built = {
        "unet": lambda: UNetModel(**unet_config, operations=comfy.ops.disable_weight_init),
        "vae": lambda: AutoencoderKL(**_vae_config(spec)["params"]),
        "text_encoder": lambda: target.clip(device="meta", **target.params),
    }
    names = {"unet": "UNet", "vae": "VAE", "text_encoder": "text encoder"}
    for part, build in built.items():
        module = build_on_meta(build, file, names[part])
        if part == "text_encoder":   # keys as build_components hands them to the CLIP
            shapes = model_config.process_clip_state_dict(dict(parts[part]))
        else:
            shapes = comfy.utils.state_dict_prefix_replace(dict(parts[part]), {COMPONENT_PREFIXES[part]: ""}, filter_keys=True)
        _require_complete(names[part], module, shapes, file.source,
                          ignore_missing=(".logit_scale", ".text_projection.weight") if part == "text_encoder" else ())


def _open_checked(bundle_name: str):
    return open_checked_bundle(full_path(bundle_name, BUNDLES, "checkpoints"), bundle_name)


def open_checked_bundle(path, name: str | None = None):
    """(spec, file) of the bundle at `path`: the spec read from the header and checked against the
    file's shapes (check_bundle_file) before any weights are read."""
    spec, file = open_bundle(path, name)
    check_bundle_file(spec, file)
    return spec, file


def load_bundle_file(path, name: str | None = None, unet_dtype: torch.dtype | None = None,
                     vae_dtype: torch.dtype | None = None):
    """(MODEL, CLIP, VAE) from the bundle at `path` (the training CLI's way in), checked as
    load_bundle checks: shapes before any weights are read, then no NaN, infinity or value beyond
    the dtype each component is kept in."""
    spec, file = open_checked_bundle(path, name)
    return build_components(spec, file.tensors(), source=file.source, unet_dtype=unet_dtype, vae_dtype=vae_dtype)


def load_bundle(bundle_name: str):
    """(MODEL, CLIP, VAE) from a bundle in models/videoldm_bundles (or the toy family) or
    models/checkpoints. The spec is read from the header and checked against the file's shapes
    (check_bundle_file) before any weights are read, and no weight may be NaN, infinite or beyond
    the range of the dtype its component is kept in.

    The MODEL can be loaded again from the file, as core's loaders allow (`cached_patcher_init`):
    ModelPatcher.clone needs that for a fresh copy under DynamicVRAM (training, hooks, MultiGPU)."""
    spec, file = _open_checked(bundle_name)
    model, clip, vae = build_components(spec, file.tensors(), source=file.source)
    model.cached_patcher_init = (reload_bundle_model, (bundle_name,))
    return model, clip, vae


def reload_bundle_model(bundle_name: str, disable_dynamic: bool = False):
    """The bundle's MODEL alone, read and checked as load_bundle reads it, from its UNet's tensors."""
    spec, file = _open_checked(bundle_name)
    unet_keys = [k for k in file.shapes if k.startswith(COMPONENT_PREFIXES["unet"])]
    model = build_model(spec, file.tensors(unet_keys), source=file.source, disable_dynamic=disable_dynamic)
    model.cached_patcher_init = (reload_bundle_model, (bundle_name,))
    return model
