"""Video upscaling: the SD x4 upscaler over video frames, tiled in space and chunked in time
(Video LDM §3.1.1: the upsampler is applied convolutionally, on patches and portions of frames).

Tiling happens inside every model evaluation: a CALC_COND_BATCH wrapper runs core's batched
model call on each region (the same spatial tiles for every frame, overlapping chunks of frames)
and blends the predictions with weights that sum to one, so every denoising step sees one
consistent prediction; the temporal layers of an applied adapter see each chunk's frames together.

The joint state stays compact: the sampler's float32 latents and the low-res frames in float16
(ours and core's conditioning's) are the only video-sized tensors. On a GPU the sampler's latents
and core's conditioning are device memory, and the host holds the frames, then the output LATENT:
the noise is made on the device frame by frame (core's numbers), and the frames are released before
the sample is moved to the host. The low-res frames are noise-augmented once, as core's x4 model
does it (the same noise, seed and schedule), and held in float16; core's conditioning carries them
at level 0 (so core does not augment them again) and the wrapper gives the model the real level. Each region's call builds its
per-cond sums, masks, batched input and concatenated frames for that region only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import comfy.model_base
import comfy.model_management as mm
import comfy.patcher_extension
import comfy.samplers
import comfy.utils
import latent_preview
import torch

from ..videoldm_core.limits import check_finite_input, check_finite_latent, check_output_size, tensor_bytes
from ..videoldm_core.video_upscale import TilePlan, TilingError, plan_tiles, smaller_overlap, smaller_tile, used_tile
from .keys import CHECKS_ITS_SAMPLE_KEY, TILING_KEY
from .sampling import RunNoise, sampler_and_sigmas
from .temporal_decoder import consume_decoded_frames

log = logging.getLogger("videoldm")
GRID = 8  # the x4 UNet halves the latent three times


def tiled_forward(plan: TilePlan, noise_level: int, on_region=lambda: None):
    """CALC_COND_BATCH wrapper: core's batched model call per region of `plan` (planned once from the
    latent's shape), on the region of x and of every cond (the low-res frames are a view of the
    compact frames until the model concatenates them), the predictions of each cond blended (one
    region: untouched). All of core's per-call state (its per-cond sums, counts and masks, the
    batched input and frames) is a region's, not the video's. y, the noise level of the low-res
    frames, is `noise_level` (the conds carry the frames already augmented, at level 0)."""

    def forward(executor, model, conds, x_in, timestep, model_options):
        shape = (x_in.shape[0], x_in.shape[-2], x_in.shape[-1])
        if shape != plan.shape:
            raise TilingError(f"the tile plan was made for latents of {plan.shape} (frames, height, width), the "
                              f"model was called with {shape}.")
        if len(plan.regions) == 1:
            on_region()
            return executor(model, _regional(conds, plan.regions[0], plan.shape, noise_level), x_in, timestep,
                            model_options)
        refuse_regional_conds(conds)

        def predict(region):
            mm.throw_exception_if_processing_interrupted()
            frames = slice(*region.frames)
            outs = executor(model, _regional(conds, region, plan.shape, noise_level),
                            x_in[frames, :, slice(*region.rows), slice(*region.cols)],
                            timestep[frames] if timestep.ndim and timestep.shape[0] == x_in.shape[0] else timestep,
                            model_options)
            on_region()
            return torch.cat(outs)

        return list(plan.blend(predict, len(conds)).chunk(len(conds)))

    return forward


def refuse_regional_conds(conds):
    for group in conds:
        for cond in group or ():
            if "control" in cond:
                raise TilingError("tiled upscaling cannot pass ControlNet hints per tile; remove the ControlNet or use "
                                  "one tile and one chunk covering the video.")
            if "area" in cond or "mask" in cond or "gligen" in cond:
                raise TilingError("tiled upscaling cannot place an area, mask or GLIGEN conditioning on each tile; "
                                  "remove it, or use one tile and one chunk covering the video.")


def _regional(conds, region, shape, noise_level: int):
    """Each cond with its model conds cut to `region`: tensors of the video's frames by frame and,
    latent-sized ones (the low-res frames), in space too; y set to the frames' noise level."""
    frames, (_, height, width) = slice(*region.frames), shape

    def cut(name, value):
        if name == "y":
            return value._copy_with(torch.tensor([noise_level]))
        cond = getattr(value, "cond", None)
        if not torch.is_tensor(cond) or cond.ndim == 0 or cond.shape[0] != shape[0]:
            return value
        cond = cond[frames]
        if cond.ndim == 4 and cond.shape[-2:] == (height, width):
            cond = cond[..., slice(*region.rows), slice(*region.cols)]
        return value._copy_with(cond)

    return [None if group is None else
            [{**c, "model_conds": {k: cut(k, v) for k, v in c.get("model_conds", {}).items()}} for c in group]
            for group in conds]


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


SAMPLER_COPIES = 6   # noise, x, denoised, a multistep sampler's previous prediction, cond and uncond blended
FRAMES_DTYPE = torch.float16   # the held low-res frames: each value rounded by at most 2^-11 of its magnitude


def check_upscale_memory(frames: int, height: int, width: int, cond_entries: int = 2) -> int:
    """The whole video is one latent through the sampler: its copies and the augmented low-res
    frames (held once, and once more for each of the `cond_entries` entries of the positive and
    negative conditioning, by core's conditioning), refused above the pack's limit before any is made."""
    implied = (SAMPLER_COPIES * tensor_bytes((frames, 4, height, width))
               + (1 + cond_entries) * tensor_bytes((frames, 3, height, width), FRAMES_DTYPE))
    return check_output_size("Video Upscale", implied, dict(frames=frames, width=width, height=height),
                             what=f"sampling a latent of {frames} frames of 4x{height}x{width}")


DECODE_WINDOW, DECODE_OVERLAP = 17, 1   # low-res latents are decoded as Temporal VAE Decode does by default


@dataclass(frozen=True)
class LowResFrames:
    """The low-res frames' count and size, and `consume(fn)`: fn called with an iterator of them in
    order as blocks (n, H, W, 3) in [0, 1] (called again from the start if decoding them runs out of
    device memory and falls back to smaller tiles)."""
    frames: int
    height: int
    width: int
    consume: Callable[[Callable[[Iterator[torch.Tensor]], torch.Tensor]], torch.Tensor]


def low_res_frames(images: torch.Tensor | None, low_res_latent: dict | None, vae) -> LowResFrames:
    """From an IMAGE, or from a LATENT decoded window by window with `vae` (Temporal VAE Decode's
    default windows), so that no float32 video of the low-res frames is ever whole in memory."""
    if (images is None) == (low_res_latent is None):
        raise TilingError("Video Upscale takes its low-res frames from exactly one source: connect images (an IMAGE) "
                          f"or low_res_latent with its vae, found {'both' if images is not None else 'neither'}.")
    if images is not None:
        if images.ndim != 4 or images.shape[-1] < 3 or 0 in images.shape:   # RGBA: alpha dropped, as core's encodes do
            raise TilingError(f"images: expected an IMAGE of at least one RGB frame of at least 1x1 pixels (frames, "
                              f"height, width, 3 channels or more), found shape {tuple(images.shape)}.")
        check_finite_input(images, "Video Upscale", "images")
        return LowResFrames(images.shape[0], images.shape[1], images.shape[2], lambda fn: fn(iter(images.split(1))))
    if vae is None:
        raise TilingError("low_res_latent needs the vae that decodes it (the low-res model's VAE, e.g. from Load "
                          "Temporal VAE or the checkpoint's VAE); none is connected.")
    samples, scale = low_res_latent["samples"], getattr(vae, "upscale_ratio", None)
    if not isinstance(scale, int) or samples.ndim != 4 or samples.shape[1] != vae.latent_channels or 0 in samples.shape:
        raise TilingError(f"low_res_latent: expected an image VAE's latent (frames, {vae.latent_channels} channels, "
                          f"height, width; none of them 0) and a VAE that upsamples by a whole factor, found a "
                          f"latent of shape {tuple(samples.shape)} and a VAE upsampling by {scale!r}. Use the VAE of "
                          "the model that made the latent.")
    check_finite_input(samples, "Video Upscale", "low_res_latent")
    return LowResFrames(samples.shape[0], samples.shape[-2] * scale, samples.shape[-1] * scale,
                        lambda fn: consume_decoded_frames(fn, vae, samples, DECODE_WINDOW, DECODE_OVERLAP, 0))


def upscale_video(model, positive, negative, images: torch.Tensor | None, noise_augmentation: float, seed: int,
                  steps: int, cfg: float, sampler_name: str, scheduler: str, tile_size: int, tile_overlap: int,
                  chunk_length: int, chunk_overlap: int, sampler=None, sigmas=None, noise=None, low_res_latent=None,
                  vae=None) -> dict:
    """The x4 LATENT of low-res frames (an IMAGE, or a LATENT with its VAE), sampled jointly with
    tiles and chunks blended at every step. `sampler`, `sigmas`, `noise`: core SAMPLER / SIGMAS /
    NOISE values replacing the node's own.

    Out of device memory, it samples again from the start with spatial tiles of half the size (the
    overlap scaled with them, down to GRID pixels), with a log line: tiles are blended at every
    step, so the result changes only within the blend's tolerance. Chunks of frames are never
    shrunk: that would change which frames the temporal layers see together."""
    check_upscaler(model)
    sampler, sigmas = sampler_and_sigmas(model, sampler_name, scheduler, steps, sampler, sigmas)
    low_res = low_res_frames(images, low_res_latent, vae)
    frames, height, width = low_res.frames, low_res.height, low_res.width
    check_grid(height, width, tile_size)
    check_upscale_memory(frames, height, width, len(positive) + len(negative))
    while True:
        plan = plan_tiles(frames, height, width, tile_size, tile_overlap, chunk_length, chunk_overlap)   # x4 latent = input size
        try:
            return {"samples": _sample(model, positive, negative, low_res, noise_augmentation, cfg, plan,
                                       sampler, sigmas,
                                       RunNoise(seed, noise, [frames], (4, height, width)))}
        except Exception as e:   # core's test of out of memory (its VAE Decode's): CUDA's error and the accelerator's
            mm.raise_non_oom(e)
            smaller = smaller_tile(tile_size, height, width)
            if smaller is None:
                raise
            log.warning("Video LDM: Video Upscale ran out of memory with tiles of %d; sampling again with tiles of %d "
                        "(blended at every step, so the result changes only within the blend's tolerance; chunks of "
                        "%d frames are kept).", used_tile(tile_size, height, width), smaller, chunk_length)
            tile_overlap = smaller_overlap(tile_overlap, tile_size, smaller, height, width)
            tile_size = smaller
            mm.soft_empty_cache()


def augmented_frames(model, low_res: LowResFrames, noise_augmentation: float, level: int, seed: int) -> torch.Tensor:
    """The low-res frames in [-1, 1] with the x4 model's own noise augmentation at `level` (its
    schedule, and the noise core's SD_X4Upscaler draws for a sampling seed `seed`, from the global
    generator as core does), as FRAMES_DTYPE, (T, 3, H, W). Frame by frame, in float32 on the CPU:
    the noise is drawn one frame at a time from one generator (the same numbers as core's draw for
    the whole video when 3·H·W is a multiple of 16, as on the 8-pixel grid; tested), so no float32
    copy of the video is made."""
    frames = torch.empty(low_res.frames, 3, low_res.height, low_res.width, dtype=FRAMES_DTYPE)
    level = torch.tensor([level])

    def augment(blocks: Iterator[torch.Tensor]) -> torch.Tensor:   # from the first frame, the generator seeded
        generator = torch.manual_seed(seed - 10) if noise_augmentation > 0 else None   # core: seed - 10, any level
        for i, image in enumerate(image for block in blocks for image in block):
            pixels = image[None, ..., :3].movedim(-1, 1).to("cpu", torch.float32) * 2.0 - 1.0
            if generator is not None:
                noise = torch.randn(pixels.shape, generator=generator)
                pixels = model.model.noise_augmentor.q_sample(pixels, level, noise=noise)
            frames[i] = pixels[0]
        return frames

    return low_res.consume(augment)


def _sample(model, positive, negative, low_res: LowResFrames, noise_augmentation, cfg, plan: TilePlan, sampler, sigmas,
            run_noise: RunNoise) -> torch.Tensor:
    frames, height, width = plan.shape
    level = round(model.model.noise_augmentor.max_noise_level * noise_augmentation)   # as core's SD_X4Upscaler
    latent = torch.zeros(1, 1, 1, 1).expand(frames, 4, height, width)   # empty: one stored zero (core reads it)
    noise = run_noise.on_device(0, latent, model.load_device)   # before the augmentation's noise, as core draws them
    lowres = augmented_frames(model, low_res, noise_augmentation, level, run_noise.run_seed(0))
    conds = [[[t, {**o, "concat_image": lowres, "noise_augmentation": 0.0}] for t, o in c]
             for c in (positive, negative)]
    regions = len(plan.regions)
    pbar = comfy.utils.ProgressBar((len(sigmas) - 1) * regions)  # one tile-step per region and step
    previewer = latent_preview.get_previewer(model.load_device, model.model.latent_format)
    done = {"steps": 0, "calls": 0}   # a sampler may call the model more than once a step (heun, dpm_2)

    def region_done():
        done["calls"] += 1
        value = done["steps"] * regions + min(done["calls"], regions)
        if value > pbar.current:
            pbar.update_absolute(value)

    def preview(step, x0, x, total_steps):   # the step's prediction, as core KSampler previews it
        check_finite_latent((x0, x), "Video Upscale", f"at step {step + 1}")
        done["steps"], done["calls"] = step + 1, 0
        value = max(pbar.current, min((step + 1) * regions, pbar.total))
        if previewer is not None:
            pbar.update_absolute(value, pbar.total, previewer.decode_latent_to_preview_image("JPEG", x0))
        elif value > pbar.current:
            pbar.update_absolute(value)

    tiled = model.clone()
    tiled.model_options.setdefault("transformer_options", {})[CHECKS_ITS_SAMPLE_KEY] = True   # named below, as Video Upscale's
    tiled.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.CALC_COND_BATCH, TILING_KEY,
                               tiled_forward(plan, level, region_done))
    samples = comfy.samplers.sample(tiled, noise, conds[0], conds[1], cfg, tiled.load_device, sampler, sigmas,
                                    model_options=tiled.model_options, latent_image=latent, callback=preview,
                                    disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=run_noise.run_seed(0))
    del noise, conds, lowres   # core's sample_custom from here: the frames go before the sample reaches the host
    samples = samples.to(device=mm.intermediate_device(), dtype=mm.intermediate_dtype())
    check_finite_latent(samples, "Video Upscale", "after sampling")   # the callback saw the last step's input only
    return samples
