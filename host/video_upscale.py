"""Video upscaling: the SD x4 upscaler over video frames, tiled in space and chunked in time
(Video LDM §3.1.1: the upsampler is applied convolutionally, on patches and portions of frames).

Tiling happens inside every model call: a DIFFUSION_MODEL wrapper runs the UNet on each region
(the same spatial tiles for every frame, overlapping chunks of frames) and blends the predictions
with weights that sum to one, so every denoising step sees one consistent prediction. At that level
x already holds the low-res frames (c_concat), so they are tiled with it; the temporal layers of an
applied adapter see each chunk's frames together.
"""

from __future__ import annotations

import logging

import comfy.model_base
import comfy.model_management as mm
import comfy.patcher_extension
import comfy.sample
import comfy.utils
import latent_preview
import torch

from ..videoldm_core.limits import check_finite_latent, check_output_size, tensor_bytes
from ..videoldm_core.video_upscale import TilePlan, TilingError, plan_tiles, smaller_tile
from .guidance import RunNoise, sampler_and_sigmas

log = logging.getLogger("videoldm")
TILING_KEY = "videoldm_tiling"
GRID = 8  # the x4 UNet halves the latent three times


def tiled_forward(plan: TilePlan, on_region=lambda: None):
    """DIFFUSION_MODEL wrapper: the UNet per region of `plan` (planned once from the latent's shape),
    predictions blended (one region: untouched)."""

    def forward(executor, x, timesteps, context, y, control, transformer_options, **kwargs):
        groups = len(transformer_options.get("cond_or_uncond", [0]))
        shape = (x.shape[0] // groups, x.shape[-2], x.shape[-1])
        if shape != plan.shape:
            raise TilingError(f"the tile plan was made for latents of {plan.shape} (frames, height, width), the "
                              f"model was called with {shape}.")
        if len(plan.regions) == 1:
            on_region()
            return executor(x, timesteps, context, y, control, transformer_options, **kwargs)
        if control is not None:
            raise TilingError("tiled upscaling cannot pass ControlNet hints per tile; remove the ControlNet or use "
                              "one tile and one chunk covering the video.")

        def predict(region):
            mm.throw_exception_if_processing_interrupted()
            rows = plan.rows(region, groups).to(x.device)

            def take(value):
                if not torch.is_tensor(value) or value.ndim == 0 or value.shape[0] != x.shape[0]:
                    return value
                if value.ndim == 4 and value.shape[-2:] == x.shape[-2:]:   # a view first: copy the tile only
                    value = value[..., slice(*region.rows), slice(*region.cols)]
                return value[rows.to(value.device)]

            out = executor(take(x), take(timesteps), take(context), take(y), None, dict(transformer_options),
                           **{k: take(v) for k, v in kwargs.items()})
            on_region()
            return out

        return plan.blend(predict, groups)

    return forward


def check_upscaler(model):
    if not isinstance(model.model, comfy.model_base.SD_X4Upscaler):
        raise TilingError(f"expected an SD x4 upscaler MODEL (e.g. x4-upscaler-ema.safetensors from Load Checkpoint), "
                          f"found {type(model.model).__name__} ({type(model.model.model_config).__name__}).")


def check_grid(height: int, width: int, tile: int):
    if height % GRID or width % GRID:
        raise TilingError(f"the x4 upscaler needs frames whose height and width are multiples of {GRID} pixels, found "
                          f"{width}x{height}; crop or pad them first (e.g. with core ImageCrop / ImagePadForOutpaint).")
    if tile % GRID:
        raise TilingError(f"tile_size must be a multiple of {GRID}, found {tile}.")


SAMPLER_COPIES = 6   # latent, noise, x, denoised, a multistep sampler's previous prediction, the model output


def check_upscale_memory(frames: int, height: int, width: int) -> int:
    """The whole video is one latent through the sampler: its copies and the low-res frames in
    [-1, 1] (the concat), refused above the pack's limit before any is made."""
    implied = SAMPLER_COPIES * tensor_bytes((frames, 4, height, width)) + tensor_bytes((frames, 3, height, width))
    return check_output_size("Video Upscale", implied, dict(frames=frames, width=width, height=height),
                             what=f"sampling a latent of {frames} frames of 4x{height}x{width}")


def upscale_video(model, positive, negative, images: torch.Tensor, noise_augmentation: float, seed: int, steps: int,
                  cfg: float, sampler_name: str, scheduler: str, tile_size: int, tile_overlap: int, chunk_length: int,
                  chunk_overlap: int, sampler=None, sigmas=None, noise=None) -> dict:
    """The x4 LATENT of IMAGE frames, sampled jointly with tiles and chunks blended at every step.
    `sampler`, `sigmas`, `noise`: core SAMPLER / SIGMAS / NOISE values replacing the node's own.

    Out of device memory, it samples again from the start with spatial tiles of half the size (the
    overlap scaled with them, down to GRID pixels), with a log line: tiles are blended at every
    step, so the result changes only within the blend's tolerance. Chunks of frames are never
    shrunk: that would change which frames the temporal layers see together."""
    check_upscaler(model)
    frames, height, width = images.shape[0], images.shape[1], images.shape[2]
    check_grid(height, width, tile_size)
    check_upscale_memory(frames, height, width)
    while True:
        plan = plan_tiles(frames, height, width, tile_size, tile_overlap, chunk_length, chunk_overlap)   # x4 latent = input size
        try:
            return {"samples": _sample(model, positive, negative, images, noise_augmentation, cfg, plan,
                                       *sampler_and_sigmas(model, sampler_name, scheduler, steps, sampler, sigmas),
                                       RunNoise(seed, noise, [frames], (4, height, width)))}
        except mm.OOM_EXCEPTION:
            smaller = smaller_tile(tile_size, height, width)
            if smaller is None:
                raise
            log.warning("Video LDM: Video Upscale ran out of memory with tiles of %d; sampling again with tiles of %d "
                        "(blended at every step, so the result changes only within the blend's tolerance; chunks of "
                        "%d frames are kept).", tile_size, smaller, chunk_length)
            tile_overlap = tile_overlap * smaller // tile_size
            tile_size = smaller
            mm.soft_empty_cache()


def _sample(model, positive, negative, images, noise_augmentation, cfg, plan: TilePlan, sampler, sigmas,
            run_noise: RunNoise) -> torch.Tensor:
    frames, height, width = plan.shape
    pixels = images[..., :3].movedim(-1, 1) * 2.0 - 1.0
    conds = [[[t, {**o, "concat_image": pixels, "noise_augmentation": noise_augmentation}] for t, o in c]
             for c in (positive, negative)]
    pbar = comfy.utils.ProgressBar((len(sigmas) - 1) * len(plan.regions))  # one tile-step per region and step
    previewer = latent_preview.get_previewer(model.load_device, model.model.latent_format)

    def preview(step, x0, x, total_steps):   # the step's prediction, as core KSampler previews it
        check_finite_latent((x0, x), "Video Upscale", f"at step {step + 1}")
        if previewer is not None:
            pbar.update_absolute(pbar.current, pbar.total, previewer.decode_latent_to_preview_image("JPEG", x0))

    tiled = model.clone()
    tiled.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, TILING_KEY,
                               tiled_forward(plan, lambda: pbar.update(1)))
    latent = torch.zeros(frames, 4, height, width)
    return comfy.sample.sample_custom(tiled, run_noise(0, latent), cfg, sampler, sigmas, conds[0], conds[1], latent,
                                      callback=preview, disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED,
                                      seed=run_noise.run_seed(0))
