"""Running temporal adapters inside ComfyUI's SD UNet without touching it.

Applying an adapter clones the MODEL and registers, on the clone only:
- the adapter's own ModelPatcher as an additional model (loaded, offloaded and cast with the UNet);
- one `forward_timestep_embed_patch` handler for ResBlock and one for SpatialTransformer, which
  runs the spatial layer and then the temporal slots that belong to it;
- an OUTER_SAMPLE wrapper that checks the frame count before the first step;
- a DIFFUSION_MODEL wrapper that takes context frames c_S (the `videoldm_context` model cond,
  one row per frame like x) out of the UNet call and hands them to the adapters' context encoders.
The adapters applied to a model are listed in `transformer_options["videoldm_adapters"]`, so
several adapters stack and the handlers are registered once. The number of frames is read per
call: T = batch // len(cond_or_uncond), so CFG batching and context windows (variable T) work.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
import torch.utils.checkpoint

import comfy.context_windows
import comfy.model_management as mm
import comfy.model_patcher
import comfy.ops
import comfy.patcher_extension
from comfy.ldm.modules.attention import SpatialTransformer, SpatialVideoTransformer, optimized_attention
from comfy.ldm.modules.diffusionmodules.openaimodel import ResBlock, VideoResBlock

from ..videoldm_core.adapter import AdapterSpec, TemporalAdapter, fresh_adapter, resolve_slots
from ..videoldm_core.context import ContextError
from ..videoldm_core.placement import animatediff_slots, videoldm_slots
from ..videoldm_core.positional import check_frame_limit
from .unet_layout import model_family, named_layers, spatial_layout

OPTIONS_KEY = "videoldm_adapters"
WRAPPER_KEY = "videoldm_temporal_adapters"
CONTEXT_KEY = "videoldm_context"   # model cond and UNet kwarg with c_S; transformer_options entry per call
LABELS_KEY = "videoldm_interpolation"  # model cond with per-frame (regime, augmentation level) rows
CHECKPOINT_KEY = "videoldm_gradient_checkpointing"  # transformer_options flag set by training
log = logging.getLogger("videoldm")


def host_attention(q, k, v, heads, mask=None):
    """The user's configured attention backend (xformers, SDPA, sage, ...) for temporal layers."""
    return optimized_attention(q, k, v, heads, mask=mask)


@dataclass(frozen=True)
class AppliedAdapter:
    """One adapter on one model: its patcher, the layers its slots run with, and the user's options."""

    name: str
    patcher: comfy.model_patcher.ModelPatcher
    strength: float
    max_distance: int | None
    inside: dict = field(default_factory=dict)   # id(spatial transformer) -> slot path (Video LDM attention)
    after: dict = field(default_factory=dict)    # id(layer) -> [slot paths] run on the layer's output

    @property
    def adapter(self) -> TemporalAdapter:
        return self.patcher.model

    def lerp(self, before, after):
        """strength s: x + s (temporal(x) - x); s = 1 uses the layer output as is."""
        return after if self.strength == 1.0 else before + self.strength * (after - before)

    def run_after(self, path, x, emb, num_frames, image_only_indicator, context_call=None):
        slot = self.adapter.slot(path)
        if self.adapter.spec.slots[path]["kind"] == "resblock":
            features = context_call.features(self, x) if context_call is not None else None
            emb = context_call.temporal_emb(self, emb) if context_call is not None else emb
            out = slot(x, emb, num_frames, image_only_indicator, context_features=features)
        else:
            out = slot(x, num_frames, max_distance=self.max_distance, attention=host_attention)
        return self.lerp(x, out)

    def mix_tokens(self, path, tokens, depth_index, num_frames, context, image_only_indicator, features=None):
        out = self.adapter.slot(path)(tokens, depth_index, num_frames, context=context,
                                      image_only_indicator=image_only_indicator, max_distance=self.max_distance,
                                      attention=host_attention, context_features=features)
        return self.lerp(tokens, out)


class ContextCall:
    """c_S and interpolation labels for one UNet call and, per adapter, its context encoder's maps
    and label embedding (computed on first use)."""

    def __init__(self, c_s: torch.Tensor | None, labels: torch.Tensor | None = None):
        self.c_s, self.labels = c_s, labels
        self._features, self._label_emb = {}, {}

    def temporal_emb(self, applied: AppliedAdapter, emb: torch.Tensor) -> torch.Tensor:
        """The timestep embedding the temporal ResBlocks see: plus the regime/level embedding, if any."""
        if self.labels is None or not applied.adapter.spec.has_interpolation_embedding:
            return emb
        return emb + self._label_embedding(applied, emb.device).to(emb.dtype)

    def _label_embedding(self, applied: AppliedAdapter, device):
        key = id(applied)
        if key not in self._label_emb:
            self._label_emb[key] = applied.adapter.interpolation_embed(self.labels.to(device, torch.float32))
        return self._label_emb[key]

    def precompute(self, adapters: list[AppliedAdapter], x: torch.Tensor):
        """Encoder maps and label embeddings now, outside any checkpointed layer (training), so a
        recomputed layer finds them and the backward reaches the encoders once."""
        for applied in adapters:
            self.features(applied, x)
            if self.labels is not None and applied.adapter.spec.has_interpolation_embedding:
                self._label_embedding(applied, x.device)

    def features(self, applied: AppliedAdapter, x: torch.Tensor):
        """The map at x's resolution, or None for an adapter without a context encoder."""
        if self.c_s is None or not applied.adapter.spec.has_context_encoder:
            return None
        key = id(applied)
        if key not in self._features:
            self._features[key] = applied.adapter.context_encoder(self.c_s.to(device=x.device, dtype=x.dtype))
        by_size = self._features[key]
        size = tuple(x.shape[-2:])
        if size not in by_size:
            raise ContextError(f"temporal adapter '{applied.name}': its context encoder makes maps of {sorted(by_size)}, "
                               f"but a temporal layer runs at {size}; the adapter needs more encoder levels for this UNet.")
        return by_size[size]


def build_adapter_patcher(spec, state_dict, source: str):
    """The adapter as a module of comfy.ops layers in its own ModelPatcher (lowvram, dtype casting).
    Weights are stored in the dtype the host picks for UNets on this device; manual_cast layers
    compute in the dtype of whatever UNet they run in. Applying never changes the stored weights."""
    module = TemporalAdapter(spec, operations=comfy.ops.manual_cast)
    patcher = comfy.model_patcher.CoreModelPatcher(module, load_device=mm.get_torch_device(),
                                                   offload_device=mm.unet_offload_device())
    module.load_weights(state_dict, source=source, assign=patcher.is_dynamic())
    parameters = sum(v.numel() for v in state_dict.values())
    module.to(mm.unet_dtype(model_params=parameters, supported_dtypes=[torch.float16, torch.bfloat16, torch.float32]))
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
            raise ValueError(f"a context encoder needs the 'videoldm' placement, found {placement!r}.")
        options["context_channels"] = context_width
        encoder = dict(in_channels=model.model.latent_format.latent_channels + 1, width=context_width,
                       levels=unet_levels(diffusion_model))
    slots = {"videoldm": videoldm_slots, "animatediff": animatediff_slots}[placement](layout, **options)
    labels = None
    if interpolation:
        emb = {layer.emb_channels for layer in layout if layer.kind == "resblock"}
        labels = dict(emb_channels=emb.pop(), regimes=2)
    spec = AdapterSpec(model_family(model), placement, slots, max_frames=options.get("max_len") if placement == "animatediff" else None,
                       context_encoder=encoder, context_frames=sorted(context_frames), interpolation=labels)
    return spec, fresh_adapter(spec)


def applied_adapters(model) -> list[AppliedAdapter]:
    return list(model.model_options.get("transformer_options", {}).get(OPTIONS_KEY, []))


def apply_adapter(model, adapter_patcher, name: str, strength: float = 1.0, max_distance: int | None = None):
    """A clone of `model` with the adapter applied; `model` itself is not changed."""
    spec = adapter_patcher.model.spec
    diffusion_model = model.model.diffusion_model
    resolved = resolve_slots(spec, spatial_layout(diffusion_model), model_family(model), source=f"'{name}'")
    m = model.clone()
    if strength == 0.0:
        return m  # exactly the image model: nothing runs
    layers = dict(named_layers(diffusion_model))
    applied = AppliedAdapter(name, adapter_patcher.clone(), strength, max_distance)
    for slot_path, layer_path in resolved.items():
        layer = layers[layer_path]
        if spec.slots[slot_path]["kind"] == "transformer":
            applied.inside[id(layer)] = slot_path
        else:
            applied.after.setdefault(id(layer), []).append(slot_path)
    options = m.model_options["transformer_options"]
    previous = options.get(OPTIONS_KEY, [])
    if not previous:
        m.set_model_forward_timestep_embed_patch((ResBlock, forward_with_temporal))
        m.set_model_forward_timestep_embed_patch((SpatialTransformer, forward_with_temporal))
        m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, WRAPPER_KEY, check_frames_before_sampling)
        m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY, route_context)
    options[OPTIONS_KEY] = previous + [applied]
    m.set_additional_models("videoldm", [a.patcher for a in options[OPTIONS_KEY]])
    return m


def _spatial(layer, x, emb, context, transformer_options, time_context, num_video_frames, image_only_indicator):
    """What forward_timestep_embed would have done with this layer."""
    if isinstance(layer, VideoResBlock):
        return layer(x, emb, num_video_frames, image_only_indicator)
    if isinstance(layer, ResBlock):
        return layer(x, emb)
    if isinstance(layer, SpatialVideoTransformer):
        return layer(x, context, time_context, num_video_frames, image_only_indicator, transformer_options)
    return layer(x, context, transformer_options)


def _transformer_with_temporal(layer: SpatialTransformer, x, context, transformer_options, mix):
    """SpatialTransformer.forward with `mix(tokens, depth_index)` after each spatial block and before
    proj_out, where Video LDM (sgm SpatialVideoTransformer) places its temporal blocks."""
    if not isinstance(context, list):
        context = [context] * len(layer.transformer_blocks)
    _, _, h, w = x.shape
    transformer_options["activations_shape"] = list(x.shape)
    x_in = x
    x = layer.norm(x)
    if not layer.use_linear:
        x = layer.proj_in(x)
    x = x.movedim(1, 3).flatten(1, 2).contiguous()
    if layer.use_linear:
        x = layer.proj_in(x)
    for i, block in enumerate(layer.transformer_blocks):
        transformer_options["block_index"] = i
        x = block(x, context=context[i], transformer_options=transformer_options)
        x = mix(x, i)
    if layer.use_linear:
        x = layer.proj_out(x)
    x = x.reshape(x.shape[0], h, w, x.shape[-1]).movedim(3, 1).contiguous()
    if not layer.use_linear:
        x = layer.proj_out(x)
    return x + x_in


def forward_with_temporal(layer, x, emb, context, transformer_options, output_shape, time_context,
                          num_video_frames, image_only_indicator):
    """forward_timestep_embed_patch handler for ResBlock and SpatialTransformer layers. When training
    with gradient checkpointing, each layer with its temporal slots is recomputed in the backward."""
    args = (layer, x, emb, context, transformer_options, output_shape, time_context, num_video_frames, image_only_indicator)
    if not (transformer_options.get(CHECKPOINT_KEY) and torch.is_grad_enabled()):
        return _forward_with_temporal(*args)
    index = transformer_options.get("transformer_index")
    out = torch.utils.checkpoint.checkpoint(_recomputable, index, *args, use_reentrant=False)
    if index is not None and isinstance(layer, SpatialTransformer):
        transformer_options["transformer_index"] = index + 1
    return out


def _recomputable(index, layer, x, emb, context, transformer_options, *rest):
    """The layer on its own copy of the options, so a recomputation does not count the transformer twice."""
    options = {**transformer_options}
    if index is not None:
        options["transformer_index"] = index
    return _forward_with_temporal(layer, x, emb, context, options, *rest)


def _forward_with_temporal(layer, x, emb, context, transformer_options, output_shape, time_context,
                           num_video_frames, image_only_indicator):
    adapters = transformer_options.get(OPTIONS_KEY, [])
    num_frames = x.shape[0] // len(transformer_options.get("cond_or_uncond", [0]))
    is_transformer = isinstance(layer, SpatialTransformer)
    if num_frames < 2:
        adapters = []  # one frame: the image model (the wrapper warned before sampling)

    context_call = transformer_options.get(CONTEXT_KEY) if adapters else None
    mixers = [(a, a.inside[id(layer)]) for a in adapters if id(layer) in a.inside] if is_transformer else []
    if mixers:
        text = context[0] if isinstance(context, list) else context
        features = {id(a): context_call.features(a, x) if context_call is not None else None for a, _ in mixers}

        def mix(tokens, depth_index):
            for applied, path in mixers:
                tokens = applied.mix_tokens(path, tokens, depth_index, num_frames, text, image_only_indicator,
                                            features[id(applied)])
            return tokens

        x = _transformer_with_temporal(layer, x, context, transformer_options, mix)
    else:
        x = _spatial(layer, x, emb, context, transformer_options, time_context, num_video_frames, image_only_indicator)
    if is_transformer and "transformer_index" in transformer_options:
        transformer_options["transformer_index"] += 1  # the host skips this for patched layers

    for applied in adapters:
        for path in applied.after.get(id(layer), ()):
            x = applied.run_after(path, x, emb, num_frames, image_only_indicator, context_call)
    return x


def slice_context_for_window(cond_key, cond_value, window, x_in, device, new_cond_item):
    """IndexListCallbacks.RESIZE_COND_ITEM: each context window gets its own frames of c_S
    (with the anchor frame core may prepend), like x."""
    if cond_key not in (CONTEXT_KEY, LABELS_KEY):
        return None
    return comfy.context_windows.slice_cond(cond_value, window, x_in, device, temporal_dim=0)


def slice_context_in_windows(handler):
    """Teach a core context-window handler to slice c_S; keyed, so it is added once."""
    resize = comfy.context_windows.IndexListCallbacks.RESIZE_COND_ITEM
    if not comfy.patcher_extension.get_callbacks_with_key(resize, WRAPPER_KEY, handler.callbacks):
        comfy.patcher_extension.add_callback_with_key(resize, WRAPPER_KEY, slice_context_for_window, handler.callbacks)


def route_context(executor, x, timesteps, context, y, control, transformer_options, **kwargs):
    """DIFFUSION_MODEL wrapper: c_S arrives as a UNet kwarg (a model cond, batched like x); the
    temporal layers find it in this call's transformer_options."""
    c_s, labels = kwargs.pop(CONTEXT_KEY, None), kwargs.pop(LABELS_KEY, None)
    if c_s is not None and (c_s.shape[0] != x.shape[0] or c_s.shape[-2:] != x.shape[-2:]):
        raise ContextError(f"context frames c_S of shape {tuple(c_s.shape)} do not line up with the latent batch "
                           f"{tuple(x.shape)}: expected one row per frame at the same height and width.")
    if labels is not None and labels.shape[0] != x.shape[0]:
        raise ContextError(f"interpolation labels of shape {tuple(labels.shape)} do not line up with the latent "
                           f"batch {tuple(x.shape)}: expected one row per frame.")
    if c_s is not None or labels is not None:
        call = ContextCall(c_s, labels)
        if transformer_options.get(CHECKPOINT_KEY) and torch.is_grad_enabled():
            call.precompute(transformer_options.get(OPTIONS_KEY, []), x)
        transformer_options = {**transformer_options, CONTEXT_KEY: call}
    return executor(x, timesteps, context, y, control, transformer_options, **kwargs)


def check_frames_before_sampling(executor, noise, *args, **kwargs):
    """OUTER_SAMPLE wrapper: frame-count problems are reported before the first step."""
    guider = executor.class_obj
    options = guider.model_options.get("transformer_options", {})
    frames = noise.shape[0]
    handler = guider.model_options.get("context_handler")
    if handler is not None:  # context windows: each window, plus the anchor frame core may prepend
        frames = min(frames, handler.context_length + 1)
        slice_context_in_windows(handler)
    for applied in options.get(OPTIONS_KEY, []):
        if applied.adapter.spec.max_frames is not None:
            check_frame_limit(frames, applied.adapter.spec.max_frames, f"temporal adapter '{applied.name}'")
    if frames < 2 and options.get(OPTIONS_KEY):
        log.warning("Video LDM: sampling %d frame with temporal adapters; temporal layers need at least 2 frames "
                    "(the latent batch is the frame count), so this runs as the image model.", frames)
    return executor(noise, *args, **kwargs)
