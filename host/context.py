"""The conditioning protocol for given frames (c_S, Video LDM §3.1.1) and interpolation labels:
the one owner of how they travel from a guider or the trainer to the temporal layers.

Producers attach c_S (one row per frame, like x) and the per-frame (regime, level) labels as model
conds (`with_context`) or pass them as UNet keyword arguments (`context_kwargs`, training). The
DIFFUSION_MODEL wrapper `route_context` takes them out of the UNet call and puts a `ContextCall`
into this call's transformer_options, where the temporal layers find it (`context_call`). Core
context windows slice them like x (`slicing_context_in_windows`, a copy of the handler per run).
"""

from __future__ import annotations

import copy
import functools
from typing import TYPE_CHECKING

import torch

import comfy.conds
import comfy.context_windows
import comfy.model_management
import comfy.patcher_extension
import comfy.utils

from ..videoldm_core.context import ContextError, VideoContext, checked_video_latent, context_positions, place_frames
from ..videoldm_core.limits import check_finite_input, check_output_size, tensor_bytes
from .keys import CHECKPOINT_KEY, CONTEXT_KEY, LABELS_KEY, OPTIONS_KEY, WRAPPER_KEY
from .unet_layout import know_layer_paths

if TYPE_CHECKING:
    from .temporal_forward import AppliedAdapter


def given_latents(frames, images, vae, use_last: int = 0, check=None) -> torch.Tensor:
    """The given frames as latents: a LATENT, or IMAGE frames encoded with the VAE; with `use_last`,
    only the last that many (only those are encoded). `check(count)` runs before any is encoded."""
    if frames is not None and images is not None:
        raise ContextError("expected the given frames as a LATENT or as IMAGE frames with a VAE, found both.")
    if frames is not None:
        samples = checked_video_latent(frames["samples"], "Video Context", "frames")
        samples = samples[-use_last:] if use_last else samples
        check_some_given(samples.shape[0], "frames")
        if check is not None:
            check(samples.shape[0])
        return samples
    if images is None:
        raise ContextError("expected the given frames: connect a LATENT (frames) or IMAGE frames and a VAE.")
    if vae is None:
        raise ContextError("IMAGE frames need a VAE to become latents; connect the VAE of the model's family.")
    images = images[-use_last:] if use_last else images
    check_some_given(images.shape[0], "images")
    if check is not None:
        check(images.shape[0])
    check_finite_input(images, "Video Context", "images")
    latents = vae.encode(images[:, :, :, :3])
    # an fp16 VAE can overflow (SDXL's, known for it): c_S would carry it into every frame
    check_finite_input(latents, "Video Context", "images (as the VAE encoded them)")
    return latents


def check_some_given(count: int, name: str):
    """A context of no frames would sample unconditioned without a word."""
    if count < 1:
        raise ContextError(f"Video Context: {name}: expected at least 1 given frame, found 0.")


def video_context(length: int, positions: str, frames=None, images=None, vae=None, use_last: int = 0):
    """(VideoContext, LATENT): the given frames placed in a video of `length` frames at `positions`.
    The positions are checked against the number of given frames before any is encoded, and the two
    latents of `length` frames (the context's and the output's) against the pack's memory limit
    before either is made."""
    where = []
    given = given_latents(frames, images, vae, use_last,
                          check=lambda count: where.extend(context_positions(positions, count, length)))
    frame_shape = tuple(given.shape[1:])
    check_output_size("Video Context", 2 * tensor_bytes((length, *frame_shape)), dict(length=length),
                      what=f"two latents of {length} frames of {frame_shape} (the context's and the output's)")
    latents = place_frames(given.to(comfy.model_management.intermediate_device(), torch.float32), where, length)
    return VideoContext(latents, tuple(where)), {"samples": latents.clone()}


def with_context(conditioning, c_s: torch.Tensor, labels: torch.Tensor | None = None):
    """A copy of CONDITIONING whose entries carry c_S (and interpolation labels) as model conds."""
    extra = {CONTEXT_KEY: comfy.conds.CONDNoiseShape(c_s)}   # cropped to an area cond's area, as x is
    if labels is not None:
        extra[LABELS_KEY] = comfy.conds.CONDRegular(labels)
    out = []
    for tensor, options in conditioning:
        options = dict(options)
        options["model_conds"] = {**options.get("model_conds", {}), **extra}
        out.append([tensor, options])
    return out


def context_kwargs(c_s: torch.Tensor | None, labels: torch.Tensor | None, device) -> dict:
    """c_S and labels as the UNet keyword arguments `route_context` takes (a direct UNet call, no sampler)."""
    return {key: value.to(device) for key, value in ((CONTEXT_KEY, c_s), (LABELS_KEY, labels)) if value is not None}


def context_call(transformer_options: dict):
    """This UNet call's ContextCall, or None when it has no given frames or labels."""
    return transformer_options.get(CONTEXT_KEY)


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


def slice_context_for_window(cond_key, cond_value, window, x_in, device, new_cond_item, retain_index_list=()):
    """IndexListCallbacks.RESIZE_COND_ITEM: each context window gets its own frames of c_S
    (with the anchor frame core may prepend), like x; the frames of the handler's
    `cond_retain_index_list` are the video's own at those positions of every window, as core gives
    every other cond (a start frame given at 0 then guides each window)."""
    if cond_key not in (CONTEXT_KEY, LABELS_KEY):
        return None
    return comfy.context_windows.slice_cond(cond_value, window, x_in, device, temporal_dim=0,
                                            retain_index_list=list(retain_index_list))


def slicing_context_in_windows(handler):
    """A copy of a core context-window handler that also slices c_S, for one sampling run: the
    handler itself belongs to the Context Windows node's MODEL and is not changed."""
    resize = comfy.context_windows.IndexListCallbacks.RESIZE_COND_ITEM
    if comfy.patcher_extension.get_callbacks_with_key(resize, WRAPPER_KEY, handler.callbacks):
        return handler
    copied = copy.copy(handler)
    copied.callbacks = comfy.utils.deepcopy_list_dict(handler.callbacks)
    retained = tuple(getattr(handler, "cond_retain_index_list", ()))
    comfy.patcher_extension.add_callback_with_key(
        resize, WRAPPER_KEY, functools.partial(slice_context_for_window, retain_index_list=retained), copied.callbacks)
    return copied


def route_context(executor, x, timesteps, context, y, control, transformer_options, **kwargs):
    """DIFFUSION_MODEL wrapper: c_S arrives as a UNet kwarg (a model cond, batched like x); the
    temporal layers find it in this call's transformer_options. The UNet that runs may be another
    instance than the one the adapters were applied to; its layers are known by path from here."""
    know_layer_paths(executor.class_obj)
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

