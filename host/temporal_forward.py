"""The per-layer forward of a UNet with temporal adapters (Video LDM §3.1: temporal layers after
each frozen spatial layer, and inside each spatial transformer before `proj_out`).

`forward_with_temporal` is the `forward_timestep_embed_patch` handler for ResBlock and
SpatialTransformer: it runs the spatial layer, then the temporal slots that belong to it, for every
adapter applied to the model (listed in `transformer_options["videoldm_adapters"]`, so adapters
stack). The number of frames is read per call: T = batch // len(cond_or_uncond), so CFG batching and
context windows (variable T) work. A ResBlock runs its norms over each cond's frames when an applied
adapter was trained that way (host/clip_norms.py).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch
import torch.utils.checkpoint

import comfy.model_patcher
from comfy.ldm.modules.attention import SpatialTransformer, SpatialVideoTransformer, optimized_attention
from comfy.ldm.modules.diffusionmodules.openaimodel import ResBlock, VideoResBlock

from ..videoldm_core.temporal_adapter import TemporalAdapter
from .clip_norms import clip_norm_strength, clip_norms_of, clip_wise, resblock_norms
from .context import context_call as current_context_call
from .keys import CHECKPOINT_KEY, OPTIONS_KEY
from .unet_layout import layer_path


def host_attention(q, k, v, heads, mask=None, attn_precision=None, transformer_options=None):
    """The user's configured attention backend (xformers, SDPA, sage, ...) for temporal layers, called
    as core's spatial attention is: at the precision the model's attention keeps (SD2.x upcasts to
    float32) and through an attention override another node set in `transformer_options`."""
    return optimized_attention(q, k, v, heads, mask=mask, attn_precision=attn_precision,
                               transformer_options=transformer_options)


@dataclass(frozen=True)
class AppliedAdapter:
    """One adapter on one model: its patcher, the layers its slots run with, and the user's options."""

    name: str
    patcher: comfy.model_patcher.ModelPatcher
    strength: float
    attention_distance: int | None
    inside: dict = field(default_factory=dict)   # spatial transformer's path -> slot path (Video LDM attention)
    after: dict = field(default_factory=dict)    # layer's path -> [slot paths] run on the layer's output
    attn_precision: torch.dtype | None = None    # the model's own attention precision (core's unet_config)

    @property
    def adapter(self) -> TemporalAdapter:
        return self.patcher.model

    def lerp(self, before, after):
        """strength s: x + s (temporal(x) - x); s = 1 uses the layer output as is."""
        return after if self.strength == 1.0 else before + self.strength * (after - before)

    def attention(self, transformer_options):
        return functools.partial(host_attention, attn_precision=self.attn_precision,
                                 transformer_options=transformer_options)

    def run_after(self, path, x, emb, num_frames, image_only_indicator, context_call=None, transformer_options=None):
        slot = self.adapter.slot(path)
        if self.adapter.spec.slots[path]["kind"] == "resblock":
            features = context_call.features(self, x) if context_call is not None else None
            emb = context_call.temporal_emb(self, emb) if context_call is not None else emb
            out = slot(x, emb, num_frames, image_only_indicator, context_features=features)
        else:
            out = slot(x, num_frames, attention_distance=self.attention_distance,
                       attention=self.attention(transformer_options))
        return self.lerp(x, out)

    def mix_tokens(self, path, tokens, depth_index, num_frames, context, image_only_indicator, features=None,
                   transformer_options=None):
        out = self.adapter.slot(path)(tokens, depth_index, num_frames, context=context,
                                      image_only_indicator=image_only_indicator, attention_distance=self.attention_distance,
                                      attention=self.attention(transformer_options), context_features=features)
        return self.lerp(tokens, out)




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

    context_call = current_context_call(transformer_options) if adapters else None
    path = layer_path(layer) if adapters else None
    mixers = [(a, a.inside[path]) for a in adapters if path in a.inside] if is_transformer else []
    if mixers:
        text = context[0] if isinstance(context, list) else context
        features = {id(a): context_call.features(a, x) if context_call is not None else None for a, _ in mixers}

        def mix(tokens, depth_index):
            for applied, path in mixers:
                tokens = applied.mix_tokens(path, tokens, depth_index, num_frames, text, image_only_indicator,
                                            features[id(applied)], transformer_options)
            return tokens

        x = _transformer_with_temporal(layer, x, context, transformer_options, mix)
    elif isinstance(layer, ResBlock) and not isinstance(layer, VideoResBlock) and "resblock" in clip_norms_of(adapters):
        with clip_wise(resblock_norms(layer), x.shape[0] // num_frames, clip_norm_strength(adapters, "resblock")):
            x = layer(x, emb)
    else:
        x = _spatial(layer, x, emb, context, transformer_options, time_context, num_video_frames, image_only_indicator)
    if is_transformer and "transformer_index" in transformer_options:
        transformer_options["transformer_index"] += 1  # the host skips this for patched layers

    for applied in adapters:
        for slot_path in applied.after.get(path, ()):
            x = applied.run_after(slot_path, x, emb, num_frames, image_only_indicator, context_call, transformer_options)
    return x

