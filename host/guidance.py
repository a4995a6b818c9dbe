"""Sampling with given frames (c_S) and context guidance (Video LDM §3.1.1): the guider and the
sampling helper that Context Guider, Extend Video and Interpolate Keyframes share (their runs'
sampler, noise and progress: host/sampling.py).

The guider attaches c_S to every branch as the `videoldm_context` model cond, so the branches keep
the same cond keys and ComfyUI batches them in one forward when memory allows (sequentially
otherwise, as for any CFG). The context-dropped branch carries c_S = 0, which the adapters' context
encoders turn into exactly nothing. Given frames can be kept as they are through the denoise mask.
"""

from __future__ import annotations

import logging
import math

import comfy.model_management
import comfy.model_patcher
import comfy.sampler_helpers
import comfy.samplers
import comfy.utils
import torch

from ..videoldm_core.context import ContextError, VideoContext, checked_video_latent, context_input
from ..videoldm_core.guidance import with_context_guidance
from ..videoldm_core.limits import check_finite_latent
from .context import with_context
from .keys import CHECKS_ITS_SAMPLE_KEY
from .temporal_adapter import applied_adapters

log = logging.getLogger("videoldm")
ON_MISSING = ("error", "ignore")


def latent_channels(model) -> int:
    """The channels of the latents `model`'s family samples."""
    return model.get_model_object("latent_format").latent_channels


def check_context_encoder(model, num_given: int, on_missing: str) -> bool:
    """True if some applied adapter reads context frames; with none, an error unless the user
    chose to ignore the context. Warns when S is not a count the adapter was trained with."""
    adapters = applied_adapters(model)
    readers = [a for a in adapters if a.adapter.spec.has_context_encoder]
    if not readers:
        if on_missing == "ignore":
            log.warning("Video LDM: no applied temporal adapter has a context encoder; the context frames are ignored: "
                        "neither read nor kept (keep_given_frames has no effect), the video is sampled as without them.")
            return False
        names = ", ".join(f"'{a.name}'" for a in adapters) or "none"
        raise ContextError(f"context frames were given but no applied temporal adapter has a context encoder "
                           f"(applied: {names}). Apply a prediction adapter (trained with context frames), or set "
                           f"if_no_context_encoder to 'ignore' to sample without the context.")
    for a in readers:
        trained = a.adapter.spec.context_frames
        if trained and num_given not in trained:
            log.warning("Video LDM: adapter '%s' was trained with %s context frames, given %d.", a.name, trained, num_given)
    return True


class ContextGuider(comfy.samplers.CFGGuider):
    """CFG with context frames: out = neg + w·(g − neg), g = f(p) + s·(f(p, c_S) − f(p))."""

    def __init__(self, model_patcher, context: VideoContext | None, context_scale: float = 1.0, keep_given: bool = True,
                 labels: torch.Tensor | None = None, augment=None, name: str = "Context Guider"):
        """`labels`: per-frame interpolation (regime, level) rows; `augment`: a function applied to
        the given latents (in the model's latent space) before they enter c_S; `name`: who a sampled
        latent holding NaN or infinity is reported as (the node, and its run)."""
        super().__init__(model_patcher)
        # its own options (core's guider shares the MODEL's): a non-finite sample is named by this node and
        # run, so the adapter's sampling wrapper leaves it
        self.model_options = comfy.model_patcher.create_model_options_clone(model_patcher.model_options)
        self.model_options.setdefault("transformer_options", {})[CHECKS_ITS_SAMPLE_KEY] = True
        self.context, self.context_scale, self.keep_given = context, context_scale, keep_given
        self.labels, self.augment, self.name = labels, augment, name

    def set_conds(self, positive, negative):
        if self.context is None:
            return super().set_conds(positive, negative)
        latents = self.model_patcher.model.process_latent_in(self.context.latents.float())
        if self.augment is not None:
            latents = self.augment(latents)
        c_s = context_input(latents, self.context.mask)
        self.inner_set_conds({"positive": with_context(positive, c_s, self.labels),
                              "negative": with_context(negative, c_s, self.labels),
                              "positive_no_context": with_context(positive, torch.zeros_like(c_s), self.labels)})

    def predict_noise(self, x, timestep, model_options={}, seed=None):
        """Core's sampling_function with one more branch: the context-dropped positive, folded into the
        conditional prediction, g = f(p) + s·(f(p, c_S) − f(p)), before anything else sees it; then
        pre-CFG hooks, `sampler_cfg_function` and post-CFG hooks run on (g, uncond) through core's
        `cfg_function`, as for any CFG. Core's cond batching takes the three conds in one call; a
        host hook (`sampler_calc_cond_batch_function`, e.g. Skip Layer Guidance) keeps core's contract,
        [cond, uncond]: it gets [positive, negative], then [positive without context, None]. At cfg 1
        the negative branch is skipped unless the model options disable that optimisation (CFG++
        samplers do)."""
        if self.context is None:
            return super().predict_noise(x, timestep, model_options, seed)
        positive = self.conds.get("positive")
        skip_negative = math.isclose(self.cfg, 1.0) and not model_options.get("disable_cfg1_optimization", False)
        negative = None if skip_negative else self.conds.get("negative")
        dropped = self.conds["positive_no_context"] if self.context_scale != 1.0 else None
        guided = dropped is not None   # an empty positive (a list of no conds) is guided too, as core batches it
        hook = model_options.get("sampler_calc_cond_batch_function")
        if hook is None:
            out = comfy.samplers.calc_cond_batch(self.inner_model, [positive, negative] + ([dropped] if guided else []),
                                                 x, timestep, model_options)
        else:
            def hooked(conds):
                return hook({"conds": conds, "input": x, "sigma": timestep, "model": self.inner_model,
                             "model_options": model_options})
            out = list(hooked([positive, negative])) + (hooked([dropped, None])[:1] if guided else [])
        out = [with_context_guidance(out[0], self.context_scale, out[2] if guided else None), out[1]]
        for fn in model_options.get("sampler_pre_cfg_function", []):
            out = fn({"conds": [positive, negative], "conds_out": out, "cond_scale": self.cfg, "timestep": timestep,
                      "input": x, "sigma": timestep, "model": self.inner_model, "model_options": model_options})
        return comfy.samplers.cfg_function(self.inner_model, out[0], out[1], self.cfg, x, timestep,
                                           model_options=model_options, cond=positive, uncond=negative)

    def sample(self, noise, latent_image, sampler, sigmas, denoise_mask=None, callback=None, disable_pbar=False, seed=None):
        keeping = self.context is not None and self.keep_given and len(self.context.positions) > 0
        if self.context is not None:
            self.context.check_fits(latent_image.shape)
            if keeping:
                latent_image, denoise_mask = self.keep(latent_image, denoise_mask)
        try:
            out = super().sample(noise, latent_image, sampler, sigmas, denoise_mask=denoise_mask, callback=callback,
                                 disable_pbar=disable_pbar, seed=seed)
        finally:   # core cleans up and drops these only when sampling ends well: a cancelled run's conds (c_S in
            # each branch, ControlNets' hint caches) and loaded models stayed on a GUIDER ComfyUI keeps cached
            if "conds" in self.__dict__ and "loaded_models" in self.__dict__:
                comfy.sampler_helpers.cleanup_models(self.conds, self.loaded_models)
            for name in ("conds", "inner_model", "loaded_models"):
                self.__dict__.pop(name, None)
        # the callback sees each step's input, not the last step's output (nor a SAMPLER that never calls it)
        check_finite_latent(out, self.name, "after sampling")
        if keeping:  # masked out of denoising; put back exactly (the sampler's scaling round trip rounds)
            positions = list(self.context.positions)
            out[positions] = self.context.latents[positions].to(out)
        return out

    def keep(self, latent_image, denoise_mask):
        """The given frames go into the latent and are masked out of denoising, so they come back unchanged."""
        positions = list(self.context.positions)
        latent_image = latent_image.clone()
        latent_image[positions] = self.context.latents[positions].to(latent_image)
        t, _, h, w = latent_image.shape
        keep = torch.ones(t, 1, h, w)
        keep[positions] = 0.0
        if denoise_mask is not None:
            keep = keep * comfy.sampler_helpers.prepare_mask(denoise_mask, latent_image.shape, "cpu")[:, :1]
        return latent_image, keep


def sample_with_context(model, positive, negative, context: VideoContext, sampler, sigmas, cfg: float, noise: torch.Tensor,
                        seed: int, on_step, context_scale: float = 1.0, keep: bool = True, labels=None,
                        augment=None, name: str = "Context Guider") -> torch.Tensor:
    """One video (a rollout segment, an interpolation window) sampled from `noise`, its given frames
    kept unless `keep` is off; `on_step(step, x0, x, total_steps)` is the sampler callback; `name`
    names the node and run in an error."""
    guider = ContextGuider(model, context, context_scale, keep_given=keep, labels=labels, augment=augment, name=name)
    guider.set_conds(positive, negative)
    guider.set_cfg(cfg)
    out = guider.sample(noise, context.latents, sampler, sigmas, callback=on_step,
                        disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=seed)
    return out.to(comfy.model_management.intermediate_device())


def context_guider(model, positive, negative, context: VideoContext, cfg: float, context_scale: float,
                   keep_given: bool, on_missing: str) -> ContextGuider:
    """The Context Guider node's GUIDER: conds set, ready for SamplerCustomAdvanced."""
    reads = check_context_encoder(model, len(context.positions), on_missing)
    if reads:   # the context's VAE against the model's family (the sampled latent is checked against the context)
        checked_video_latent(context.latents, "Context Guider", "context", latent_channels(model))
    guider = ContextGuider(model, context if reads else None, context_scale, keep_given)
    guider.set_conds(positive, negative)
    guider.set_cfg(cfg)
    return guider
