"""Context Guider: sampling with given frames (c_S) and context guidance (Video LDM §3.1.1).

The guider attaches c_S to every branch as the `videoldm_context` model cond, so the branches keep
the same cond keys and ComfyUI batches them in one forward when memory allows (sequentially
otherwise, as for any CFG). The context-dropped branch carries c_S = 0, which the adapters' context
encoders turn into exactly nothing. Given frames can be kept as they are through the denoise mask.
"""

from __future__ import annotations

import logging

import comfy.conds
import comfy.model_management
import comfy.sample
import comfy.sampler_helpers
import comfy.samplers
import torch
from comfy_api.latest import io
from typing_extensions import override

from ..videoldm_core.context import ContextError, VideoContext, context_input
from ..videoldm_core.guidance import context_guidance, needs_branches
from .temporal_patch import CONTEXT_KEY, LABELS_KEY, applied_adapters
from .video_context import VideoContextType

log = logging.getLogger("videoldm")
ON_MISSING = ("error", "ignore")


def with_context(conditioning, c_s: torch.Tensor, labels: torch.Tensor | None = None):
    """A copy of CONDITIONING whose entries carry c_S (and interpolation labels) as model conds."""
    extra = {CONTEXT_KEY: comfy.conds.CONDRegular(c_s)}
    if labels is not None:
        extra[LABELS_KEY] = comfy.conds.CONDRegular(labels)
    out = []
    for tensor, options in conditioning:
        options = dict(options)
        options["model_conds"] = {**options.get("model_conds", {}), **extra}
        out.append([tensor, options])
    return out


def check_context_encoder(model, num_given: int, on_missing: str) -> bool:
    """True if some applied adapter reads context frames; with none, an error unless the user
    chose to ignore the context. Warns when S is not a count the adapter was trained with."""
    adapters = applied_adapters(model)
    readers = [a for a in adapters if a.adapter.spec.has_context_encoder]
    if not readers:
        if on_missing == "ignore":
            log.warning("Video LDM: no applied temporal adapter has a context encoder; the context frames are ignored.")
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
                 labels: torch.Tensor | None = None, augment=None):
        """`labels`: per-frame interpolation (regime, level) rows; `augment`: a function applied to
        the given latents (in the model's latent space) before they enter c_S."""
        super().__init__(model_patcher)
        self.context, self.context_scale, self.keep_given = context, context_scale, keep_given
        self.labels, self.augment = labels, augment

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
        if self.context is None:
            return super().predict_noise(x, timestep, model_options, seed)
        run_negative, run_dropped = needs_branches(self.cfg, self.context_scale)
        positive, negative = self.conds.get("positive"), self.conds.get("negative")
        conds = [positive, negative if run_negative else None] + ([self.conds["positive_no_context"]] if run_dropped else [])
        out = comfy.samplers.calc_cond_batch(self.inner_model, conds, x, timestep, model_options)
        cond_pred, uncond_pred = out[0], out[1]
        guided = context_guidance(cond_pred, self.cfg, self.context_scale, uncond=uncond_pred,
                                  cond_no_context=out[2] if run_dropped else None)
        for fn in model_options.get("sampler_post_cfg_function", []):
            guided = fn({"denoised": guided, "cond": positive, "uncond": negative, "cond_scale": self.cfg,
                         "model": self.inner_model, "uncond_denoised": uncond_pred, "cond_denoised": cond_pred,
                         "sigma": timestep, "model_options": model_options, "input": x})
        return guided

    def sample(self, noise, latent_image, sampler, sigmas, denoise_mask=None, callback=None, disable_pbar=False, seed=None):
        keeping = self.context is not None and self.keep_given and len(self.context.positions) > 0
        if self.context is not None:
            self.context.check_fits(latent_image.shape)
            if keeping:
                latent_image, denoise_mask = self.keep(latent_image, denoise_mask)
        out = super().sample(noise, latent_image, sampler, sigmas, denoise_mask=denoise_mask, callback=callback,
                             disable_pbar=disable_pbar, seed=seed)
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


def sample_with_context(model, positive, negative, context: VideoContext, sampler, sigmas, cfg: float, seed: int,
                        on_step, context_scale: float = 1.0, keep: bool = True, labels=None, augment=None) -> torch.Tensor:
    """One video (a rollout segment, an interpolation window) sampled from noise, its given frames kept
    unless `keep` is off."""
    guider = ContextGuider(model, context, context_scale, keep_given=keep, labels=labels, augment=augment)
    guider.set_conds(positive, negative)
    guider.set_cfg(cfg)
    noise = comfy.sample.prepare_noise(context.latents, seed)
    out = guider.sample(noise, context.latents, sampler, sigmas, callback=lambda *args: on_step(), disable_pbar=True,
                        seed=seed)
    return out.to(comfy.model_management.intermediate_device())


class ContextGuiderNode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VideoLDMContextGuider",
            display_name="Context Guider",
            category="Video LDM/sampling",
            description="A GUIDER for SamplerCustomAdvanced that samples a video from given context frames (Video LDM "
                        "prediction) with text CFG and context guidance: f(z) + s·(f(z; c_S) − f(z)).",
            inputs=[
                io.Model.Input("model", tooltip="A model with a prediction temporal adapter applied (one with a context encoder)."),
                io.Conditioning.Input("positive", tooltip="The prompt."),
                io.Conditioning.Input("negative", tooltip="The negative prompt (it also sees the context frames)."),
                VideoContextType.Input("context", tooltip="From Video Context: which frames are given."),
                io.Float.Input("cfg", default=7.5, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="Text classifier-free guidance scale; 1 skips the negative branch."),
                io.Float.Input("context_scale", default=1.0, min=0.0, max=20.0, step=0.05,
                               tooltip="Context guidance s: 1 is plain conditioning on the context; above 1 also runs a "
                                       "context-dropped branch and pushes away from it (the paper uses s >= 1)."),
                io.Boolean.Input("keep_given_frames", default=True,
                                 tooltip="Return the given frames unchanged (they are masked out of denoising)."),
                io.Combo.Input("if_no_context_encoder", options=list(ON_MISSING), default="error",
                               tooltip="When no applied adapter reads context frames: stop with an error, or ignore the "
                                       "context and guide with text CFG only."),
            ],
            outputs=[io.Guider.Output(tooltip="For SamplerCustomAdvanced; the latent must have the context's frame count.")],
        )

    @classmethod
    @override
    def execute(cls, model, positive, negative, context, cfg, context_scale, keep_given_frames,
                if_no_context_encoder) -> io.NodeOutput:
        reads = check_context_encoder(model, len(context.positions), if_no_context_encoder)
        guider = ContextGuider(model, context if reads else None, context_scale, keep_given_frames)
        guider.set_conds(positive, negative)
        guider.set_cfg(cfg)
        return io.NodeOutput(guider)
