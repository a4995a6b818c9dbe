"""Temporal adapters in ComfyUI (Video LDM §3.1): read from a file, built as a module of comfy.ops
layers in its own ModelPatcher, made fresh for training, and applied to a MODEL without touching it.

Applying clones the MODEL and registers, on the clone only:
- the adapter's own ModelPatcher as an additional model (loaded, offloaded and cast with the UNet);
- one `forward_timestep_embed_patch` handler for ResBlock and one for SpatialTransformer
  (host/temporal_forward.py), which runs the spatial layer and then the temporal slots of it;
- an OUTER_SAMPLE wrapper that checks the frame count before the first step;
- a DIFFUSION_MODEL wrapper that routes c_S and interpolation labels (host/context.py);
- the noise schedule the adapter was trained with, as a `model_sampling` object patch
  (host/noise_schedule.py), and, for adapters trained that way, the UNet's output norm over the
  clip (a DIFFUSION_MODEL wrapper, host/clip_norms.py).
"""

from __future__ import annotations

import logging
import os
import weakref
from dataclasses import dataclass

import torch

import comfy.model_management as mm
import comfy.model_patcher
import comfy.ops
import comfy.patcher_extension
import comfy.utils
from comfy.ldm.modules.attention import SpatialTransformer
from comfy.ldm.modules.diffusionmodules.openaimodel import ResBlock

from ..videoldm_core.confined_paths import within
from ..videoldm_core.errors import VideoLDMError, shown
from ..videoldm_core.importers import read_adapter_file
from ..videoldm_core.interpolation import MAX_AUGMENTATION
from ..videoldm_core.limits import check_finite_latent
from ..videoldm_core.placement import animatediff_slots, videoldm_slots
from ..videoldm_core.positional import check_frame_limit
from ..videoldm_core.temporal_adapter import (ADAPTER_METADATA_KEY, AdapterCompatibilityError, AdapterFormatError, AdapterSpec,
                                              TemporalAdapter, resolve_slots, save_adapter)
from ..videoldm_core.weights_file import WeightsFile, check_range
from .confined_paths import file_inside, name_problem, writing
from .context import route_context, slicing_context_in_windows
from .clip_norms import output_norm_over_clip
from .keys import ADDITIONAL_MODELS_KEY, CHECKS_ITS_SAMPLE_KEY, CLIP_NORMS_KEY, OPTIONS_KEY, SCHEDULE_KEY, WRAPPER_KEY
from .model_folders import TEMPORAL_ADAPTERS, full_path
from .noise_schedule import AUTO, choose_schedule, model_schedule, schedule_replaced, set_schedule, unset_schedule
from .temporal_forward import AppliedAdapter, forward_with_temporal
from .unet_layout import know_layer_paths, model_family, spatial_layout

log = logging.getLogger("videoldm")


@dataclass(frozen=True)
class LoadedAdapter:
    """The TEMPORAL_ADAPTER value: the adapter's own ModelPatcher, its spec and its file name."""

    name: str
    spec: AdapterSpec
    patcher: object


def load_listed_adapter(name: str) -> LoadedAdapter:
    """Load Temporal Adapter's file `name`, as its models folders list it."""
    return load_temporal_adapter(full_path(name, TEMPORAL_ADAPTERS), name)


def load_temporal_adapter(path: str, name: str) -> LoadedAdapter:
    """The adapter file `name` (as listed in its models folder), checked before anything is built
    (videoldm_core.importers.read_adapter_file)."""
    spec, native = read_adapter_file(path, name)
    if spec.source == "svd" and ADAPTER_METADATA_KEY not in WeightsFile(path, name, AdapterFormatError).metadata:
        # SVD's own layers, imported from its checkpoint (not an adapter trained from them and saved)
        log.warning("Video LDM: '%s' holds SVD's temporal layers. On an SD2.x UNet they run in the paper's layout, "
                    "not as SVD trained them (there they read SVD's own embedding of the EDM noise level, fps and "
                    "motion labels, and a CLIP image token): use them to start training (train.py adapter.init), "
                    "not as a ready video model.", name)
    return LoadedAdapter(name, spec, build_adapter_patcher(spec, native, source=f"'{name}'"))


SAVED_SUFFIX = "_00001_.safetensors"   # what a save adds to its name: core's counter (five digits) and the extension


def prefix_problem(filename_prefix: str) -> str | None:
    """Why Save Temporal Adapter cannot save under `filename_prefix`, or None (validation: nothing made):
    it leaves models/temporal_adapters (by real path: a symlinked subfolder cannot lead out), ends in no
    name, or holds a name the filesystem cannot."""
    import folder_paths

    root, kind = folder_paths.get_folder_paths(TEMPORAL_ADAPTERS)[0], f"models/{TEMPORAL_ADAPTERS}"
    subfolder, name = os.path.split(os.path.normpath(filename_prefix))
    if os.path.isabs(filename_prefix) or not within(os.path.join(root, subfolder), [root]) or name in ("", ".", ".."):
        return f"expected a filename_prefix inside {kind} that ends in a name, found {shown(filename_prefix)}."
    problem = name_problem(root, filename_prefix, kind, SAVED_SUFFIX)
    return problem and f"filename_prefix: {problem}"


def save_temporal_adapter(adapter: LoadedAdapter, filename_prefix: str) -> str:
    """Writes the adapter in the native format into models/temporal_adapters (the folder Load
    Temporal Adapter lists; a prefix cannot leave it); returns the name Load lists it under."""
    import folder_paths

    problem = prefix_problem(filename_prefix)   # before any folder is listed or made
    if problem is not None:
        raise VideoLDMError(f"Save Temporal Adapter: {problem}")
    root, kind = folder_paths.get_folder_paths(TEMPORAL_ADAPTERS)[0], f"models/{TEMPORAL_ADAPTERS}"
    os.makedirs(root, exist_ok=True)
    with writing(filename_prefix, kind, "Save Temporal Adapter: filename_prefix"):   # a full disk, a file as folder
        folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(filename_prefix, root)
        filename = f"{name}_{counter:05}_.safetensors"
        save_adapter(file_inside(root, os.path.join(subfolder, filename), kind), adapter.patcher.model, adapter.spec)
    return os.path.join(subfolder, filename)


ADAPTER_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def build_adapter_patcher(spec, state_dict, source: str):
    """The adapter as a module of comfy.ops layers in its own ModelPatcher (lowvram, dtype casting).
    Weights are stored in the dtype the host picks for UNets on this device (where that is a float8
    type, --fp8_e4m3fn-unet and the like, the dtype an fp8 UNet computes in: the adapter's own
    layers cannot run in 8 bits); manual_cast layers compute in the dtype of whatever UNet they run
    in. Applying never changes the stored weights."""
    parameters = sum(v.numel() for v in state_dict.values())
    dtype = mm.unet_dtype(model_params=parameters, supported_dtypes=list(ADAPTER_DTYPES))
    if dtype not in ADAPTER_DTYPES and dtype != torch.float64:
        dtype = mm.unet_manual_cast(dtype, mm.get_torch_device(), list(ADAPTER_DTYPES)) or torch.float32
    check_range(state_dict, dtype, source, AdapterFormatError)
    device = mm.unet_inital_load_device(parameters, dtype)
    module = TemporalAdapter(spec, operations=comfy.ops.manual_cast, dtype=dtype, device=device)   # built where it runs
    patcher = comfy.model_patcher.CoreModelPatcher(module, load_device=mm.get_torch_device(),
                                                   offload_device=mm.unet_offload_device())
    module.load_weights(state_dict, source=source, assign=patcher.is_dynamic())
    module.to(device=device, dtype=dtype)   # the few tensors made outside `operations` (alphas, position tables)
    return patcher


def unet_levels(diffusion_model) -> int:
    """Number of resolutions of an SD UNet: one more than its downsampling layers."""
    from comfy.ldm.modules.diffusionmodules.openaimodel import Downsample
    return 1 + sum(isinstance(m, Downsample) for m in diffusion_model.input_blocks.modules())


def fresh_adapter_for_model(model, placement: str = "videoldm", context_frames=(), context_width: int = 64,
                            interpolation: bool = False, **options):
    """(spec, TemporalAdapter) with slots for every spatial layer of `model`, ready to train: its
    output layers start at zero, so applying it leaves the model's output exactly unchanged.
    `options` go to the placement (e.g. positional="relative", text_context=False, max_len=32).
    `context_frames` (e.g. (0, 1, 2)): add a context encoder for prediction (Video LDM placement).
    `interpolation`: also embed the interpolation regime label and augmentation level."""
    diffusion_model = model.model.diffusion_model
    layout = spatial_layout(diffusion_model)
    encoder = None
    if context_frames:
        if placement != "videoldm":
            raise AdapterCompatibilityError(f"a context encoder needs the 'videoldm' placement, found {placement!r}.")
        options["context_channels"] = context_width
        encoder = dict(in_channels=model.model.latent_format.latent_channels + 1, width=context_width,
                       levels=unet_levels(diffusion_model))
    slots = {"videoldm": videoldm_slots, "animatediff": animatediff_slots}[placement](layout, **options)
    labels = None
    if interpolation:
        emb = {layer.emb_channels for layer in layout if layer.kind == "resblock"}
        labels = dict(emb_channels=emb.pop(), regimes=2, augmentation=[0.0, MAX_AUGMENTATION])
    schedule = model_schedule(model)   # what the trainer samples noise levels from
    tables = [slot["max_len"] for slot in slots.values() if slot["kind"] == "motion_module"]
    spec = AdapterSpec(model_family(model).name, placement, slots, max_frames=min(tables, default=None),
                       context_encoder=encoder, context_frames=sorted(context_frames), interpolation=labels,
                       noise_schedule=schedule and schedule.to_dict())
    return spec, TemporalAdapter(spec)   # output layers start at zero



def applied_adapters(model) -> list[AppliedAdapter]:
    return list(model.model_options.get("transformer_options", {}).get(OPTIONS_KEY, []))


def apply_adapter(model, adapter_patcher, name: str, strength: float = 1.0, attention_distance: int | None = None,
                  noise_schedule: str = AUTO):
    """A clone of `model` with the adapter applied and the chosen noise schedule (host/noise_schedule.py);
    `model` itself is not changed."""
    spec = adapter_patcher.model.spec
    diffusion_model = model.model.diffusion_model
    resolved = resolve_slots(spec, spatial_layout(diffusion_model), model_family(model).name, source=f"'{name}'")
    if strength == 0.0:
        return model.clone()  # exactly the image model: nothing runs
    if schedule_replaced(model) is not None:   # a ModelSampling node between two Apply nodes
        log.warning("Video LDM: a node between Apply Temporal Adapter nodes changed the model's sampling (%s); "
                    "applying '%s' sets the adapters' schedule again, so that node has no effect here. Place it "
                    "before the first Apply Temporal Adapter (an LCM there is kept, on the adapters' betas).",
                    type(model.get_model_object("model_sampling")).__name__, name)
    decided = choose_schedule(model, noise_schedule, spec.beta_schedule, name)
    m = model.clone()
    set_schedule(m, decided)
    know_layer_paths(diffusion_model)
    applied = AppliedAdapter(name, adapter_patcher.clone(), strength, attention_distance,
                             attn_precision=model.model.model_config.unet_config.get("attn_precision"))
    for slot_path, path in resolved.items():
        if spec.slots[slot_path]["kind"] == "transformer":
            applied.inside[path] = slot_path
        else:
            applied.after.setdefault(path, []).append(slot_path)
    options = m.model_options["transformer_options"]
    previous = options.get(OPTIONS_KEY, [])
    if not previous:
        m.set_model_forward_timestep_embed_patch((ResBlock, forward_with_temporal))
        m.set_model_forward_timestep_embed_patch((SpatialTransformer, forward_with_temporal))
        m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, WRAPPER_KEY, checked_sampling)
        m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY, route_context)
    if "output" in spec.clip_norms and not any("output" in a.adapter.spec.clip_norms for a in previous):
        m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, CLIP_NORMS_KEY, output_norm_over_clip)
    options[OPTIONS_KEY] = previous + [applied]
    m.set_additional_models(ADDITIONAL_MODELS_KEY, [a.patcher for a in options[OPTIONS_KEY]])
    return m


def without_adapters(model):
    """`model` as it was before any Apply Temporal Adapter: a clone without the adapters, their
    patches and wrappers and the noise schedule they chose (`model` itself when none was applied).
    Everything else on it stays (LoRA, other nodes' patches, a ModelSampling node's schedule)."""
    options = model.model_options.get("transformer_options", {})
    if OPTIONS_KEY not in options and SCHEDULE_KEY not in options:
        return model
    m = model.clone()
    options = m.model_options["transformer_options"]
    options.pop(OPTIONS_KEY, None)
    patches = options.get("patches", {})
    if "forward_timestep_embed_patch" in patches:
        patches["forward_timestep_embed_patch"] = [p for p in patches["forward_timestep_embed_patch"]
                                                   if p[1] is not forward_with_temporal]
    for kind, key in ((comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, WRAPPER_KEY),
                      (comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY),
                      (comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, CLIP_NORMS_KEY)):
        m.remove_wrappers_with_key(kind, key)
    m.remove_additional_models(ADDITIONAL_MODELS_KEY)
    unset_schedule(m)
    return m



_last_replaced_warning = (lambda: None, None)   # (the MODEL warned about, by weak reference; the warning)


def warn_if_schedule_replaced(model):
    """Logs `schedule_replaced`'s warning, once for a MODEL sampled several times in a row (Extend
    Video's segments, Interpolate Keyframes' windows)."""
    global _last_replaced_warning
    replaced = schedule_replaced(model) if model is not None else None
    if replaced is None:
        return
    last_model, last_warning = _last_replaced_warning
    if last_model() is not model or last_warning != replaced:
        log.warning("Video LDM: %s", replaced)
        _last_replaced_warning = (weakref.ref(model), replaced)


def checked_sampling(executor, noise, *args, **kwargs):
    """OUTER_SAMPLE wrapper: frame-count problems are reported before the first step, and a sampled
    latent that holds NaN or infinity after the last (core KSampler and SamplerCustom check neither:
    VAE Decode would make black frames of it without a word)."""
    guider = executor.class_obj
    options = guider.model_options.get("transformer_options", {})
    frames = noise.shape[0]
    handler = guider.model_options.get("context_handler")
    windows = ""
    if handler is not None:  # context windows: each window, plus the anchor frame of core's causal_window_fix
        anchor = int(bool(getattr(handler, "causal_window_fix", False)))
        frames = min(frames, handler.context_length + anchor)
        guider.model_options["context_handler"] = slicing_context_in_windows(handler)   # this run's options
        if anchor:
            windows = (f" (in context windows of {handler.context_length} frames plus the anchor frame that core's "
                     "causal_window_fix prepends: shorten context_length or turn causal_window_fix off)")
    for applied in options.get(OPTIONS_KEY, []):
        if applied.adapter.spec.max_frames is not None:
            check_frame_limit(frames, applied.adapter.spec.max_frames, f"temporal adapter '{applied.name}'{windows}")
    warn_if_schedule_replaced(getattr(guider, "model_patcher", None))
    if frames < 2 and options.get(OPTIONS_KEY):
        log.warning("Video LDM: sampling %d frame with temporal adapters; temporal layers need at least 2 frames "
                    "(the latent batch is the frame count), so this runs as the image model.", frames)
    out = executor(noise, *args, **kwargs)
    if not options.get(CHECKS_ITS_SAMPLE_KEY):   # the pack's own samplers name their node and run
        names = ", ".join(f"'{applied.name}'" for applied in options.get(OPTIONS_KEY, []))
        check_finite_latent(out, "Video LDM", f"after sampling with the temporal adapter(s) {names}" if names else
                            "after sampling with the adapted model")
    return out
