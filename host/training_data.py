"""The data side of training in ComfyUI: a MODEL's training clips made with its own VAE and text
encoder. One video's IMAGE frames as in-memory clips (`training_items`), a folder's clips encoded
once into the latent cache and read one at a time (`folder_items`, keyed by the VAE encoder's
weights and, with captions, the text encoder's), caption embeddings cut to CLIP's 77 tokens, the
temporal decoder's frames and latents, the fingerprint by which the node sees a folder change; and
the training CLI's data section as clips, a cached dataset and each step's batches.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch
from torch.utils.data import ConcatDataset

from ..videoldm_core.errors import VideoLDMError
from ..videoldm_core.interpolation import regime_fps
from ..videoldm_core.training.batches import StepBatches
from ..videoldm_core.training.crops import latent_augmentation
from ..videoldm_core.training.data import ClipSpec, VideoFolder, discover
from ..videoldm_core.training.distributed import all_gathered, barrier, ranks_where
from ..videoldm_core.training.latent_cache import CachedClips, build_latent_cache
from ..videoldm_core.training.modes import mode_named
from ..videoldm_core.training.objective import TrainingError
from ..videoldm_core.training.run_config import DEFAULT_FRAMES
from .confined_paths import training_folder, training_roots
from .unet_layout import model_family

log = logging.getLogger("videoldm")


def encode_video(vae, frames: torch.Tensor, chunk: int = 16) -> torch.Tensor:
    """VAE latents of frames (N, H, W, 3) in [0, 1], a chunk at a time: (N, C, h, w), unscaled."""
    with torch.inference_mode(False), torch.no_grad():
        return torch.cat([vae.encode(frames[i:i + chunk, :, :, :3]).float().cpu() for i in range(0, frames.shape[0], chunk)])


def frame_clips(video: torch.Tensor, clip_frames: int, stride: int = 1) -> list[torch.Tensor]:
    """Every window of `clip_frames` consecutive frames, `stride` apart, of one video (N, ...)."""
    if video.shape[0] < clip_frames:
        raise TrainingError(f"clips of {clip_frames} frames need a video of at least {clip_frames} frames, "
                            f"found {video.shape[0]}.")
    return [video[i:i + clip_frames] for i in range(0, video.shape[0] - clip_frames + 1, stride)]


def low_res_frames(images: torch.Tensor) -> torch.Tensor:
    """What the x4 upscaler is conditioned on: IMAGE frames (N, H, W, 3) in [0, 1], 4x area-downsampled,
    as (N, 3, H/4, W/4) in [-1, 1]."""
    h, w = images.shape[1:3]
    if h % 4 or w % 4:
        raise TrainingError(f"upscaler training needs frames whose size is a multiple of 4, found {w}x{h}.")
    return torch.nn.functional.interpolate(images[..., :3].movedim(-1, 1), size=(h // 4, w // 4), mode="area") * 2 - 1


def check_training_frames(images: torch.Tensor, clip_frames: int, mode):
    """The node's `images` can make clips for `mode`, checked before anything is built or encoded."""
    if images.ndim != 4 or images.shape[0] < clip_frames:
        raise TrainingError(f"Train Temporal Adapter: images: clips of {clip_frames} frames need at least "
                            f"{clip_frames} frames, found {images.shape[0] if images.ndim == 4 else tuple(images.shape)}.")
    h, w = images.shape[1:3]
    if mode_named(mode).is_upscaler and (h % 4 or w % 4):
        raise TrainingError(f"Train Temporal Adapter: images: upscaler training needs frames whose size is a multiple "
                            f"of 4, found {w}x{h}.")


def check_low_res_grid(latents: torch.Tensor, low: torch.Tensor):
    if latents.shape[-2:] != low.shape[-2:]:
        h, w = (4 * n for n in low.shape[-2:])
        raise TrainingError(f"the VAE makes {tuple(latents.shape[-2:])} latents of {h}x{w} frames; the x4 upscaler's "
                            f"VAE makes latents at a quarter of the size ({h // 4}x{w // 4}). Use the upscaler's VAE.")


def training_items(model, vae, images: torch.Tensor, clip_frames: int, mode, stride: int = 1) -> list[dict]:
    """Training clips from one video of IMAGE frames: latents in the model's latent space, and for
    the x4 upscaler the 4x-downsampled frames ([-1, 1]) it is conditioned on."""
    upscaler = mode_named(mode).is_upscaler
    if upscaler:
        low = low_res_frames(images)
    latents = model.model.process_latent_in(encode_video(vae, images))
    if upscaler:
        check_low_res_grid(latents, low)
    clips = frame_clips(latents, clip_frames, stride)
    if not upscaler:
        return [{"latents": c} for c in clips]
    return [{"latents": c, "low_res": l} for c, l in zip(clips, frame_clips(low, clip_frames, stride))]


def encoder_fingerprint(vae) -> str:
    """An identity for a VAE's encoder (for latent cache keys): its class and a hash of all its weights
    (two encoders that differ past a tensor's first values make other latents)."""
    return f"{type(vae.first_stage_model).__name__}-{weights_digest(vae.first_stage_model.encoder)}"


def weights_digest(module: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def folder_items(model, vae, dataset, mode, cache_dir, progress=None, encode_text=None, extra=None,
                 built_by=None) -> CachedClips:
    """Training clips from a VideoFolder: latents (and the x4 upscaler's low-res frames) encoded once
    into a shard cache (reused while files, clip spec and VAE stay the same), read one clip at a time
    when a step asks for it and scaled into the model's latent space. `extra`: entries every item gets;
    `built_by`: (who, key) of the rank that built the cache, for a rank that only reads it."""
    to_images = lambda frames: (frames.movedim(1, -1) + 1) / 2   # (T,3,H,W) [-1,1] -> (T,H,W,3) [0,1]
    upscaler = mode_named(mode).is_upscaler

    def encode(frames):
        images = to_images(frames)
        latents = encode_video(vae, images)
        if not upscaler:
            return latents
        low = low_res_frames(images)
        check_low_res_grid(latents, low)
        return {"latents": latents, "low_res": low}

    encoder = encoder_fingerprint(vae) + ("|low_res" if upscaler else "")
    if encode_text is not None:   # cached caption embeddings are the text encoder's too
        if not getattr(encode_text, "identity", None):
            raise TrainingError("the caption encoder states no identity (its `identity`: the text encoder's weights), "
                                "which the latent cache's key needs; make it with caption_encoder.")
        encoder += f"|text:{encode_text.identity}"
    shards = build_latent_cache(dataset, encode, cache_dir, encoder, progress=progress, encode_text=encode_text,
                                built_by=built_by)
    # the latent format's own method, not the model's: nothing the dataset holds keeps a UNet alive
    return CachedClips(shards, model.model.latent_format.process_in, extra)


CLIP_CONTEXT_LENGTH = 77   # one chunk of CLIP tokens (start, 75, end): SD1.x, SD2.x and SDXL alike


def caption_encoder(clip, base):
    """Captions → (N, L, D) cross-attention context with the checkpoint's own text encoder ("" for none).
    Refused for a UNet that also takes a pooled text vector (SDXL's ADM input): per-clip captions
    would reach its cross-attention while its pooled input kept the run prompt's, a conditioning
    that sampling never gives."""
    if getattr(base.model, "adm_channels", 0) and not model_family(base).concat_image:
        raise TrainingError(f"data.captions: {type(base.model).__name__} also conditions on the pooled text vector, "
                            "which the pack does not cache per caption; train with one 'prompt' for every clip, or "
                            "on an SD1.x/SD2.x model.")

    def encode_one(caption: str) -> torch.Tensor:
        context = clip.encode_from_tokens(clip.tokenize(caption or "")).float().cpu()
        if context.shape[1] > CLIP_CONTEXT_LENGTH:   # ComfyUI encodes a long text as several chunks
            log.info("Video LDM: a caption longer than CLIP's %d tokens is cut to its first %d, as SD training "
                     "truncates captions: %.60s...", CLIP_CONTEXT_LENGTH, CLIP_CONTEXT_LENGTH, caption)
            context = context[:, :CLIP_CONTEXT_LENGTH]
        return context

    def encode(captions: list[str]) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([encode_one(c) for c in captions])
    # the latent cache's key for the caption embeddings: the text encoder's class, weights and the cut
    model = clip.cond_stage_model
    encode.identity = f"{type(model).__name__}-{weights_digest(model)}-{CLIP_CONTEXT_LENGTH}"
    return encode


def decoder_items(vae, dataset, progress=None) -> list[dict]:
    """Temporal-decoder training clips: the frames ([-1, 1]) and the frozen encoder's latents after
    post_quant_conv, i.e. what the decoder's conv_in sees."""
    first_stage = vae.first_stage_model
    items = []
    for i in range(len(dataset)):
        frames = dataset[i]["frames"]
        with torch.inference_mode(False), torch.no_grad():
            z = encode_video(vae, (frames.movedim(1, -1) + 1) / 2)
            post = getattr(first_stage, "post_quant_conv", None)
            if post is not None:
                z = post.to(z.device)(z.to(next(post.parameters()).dtype)).float()
        items.append({"frames": frames.float(), "latents": z.cpu()})
        if progress is not None:
            progress(i + 1, len(dataset))
    return items


def folder_fingerprint(folder: str) -> str:
    """What decides the clips Train Temporal Adapter reads from `folder`, without opening a clip: each
    entry's name, size, newest modification and caption (as the latent cache's key). A folder it
    would refuse fingerprints as its refusal (the run fails with it)."""
    try:
        entries = discover(training_folder(folder), training_roots(), folder)
    except (VideoLDMError, OSError) as e:
        return f"refused: {e}"
    return hashlib.sha256(repr([(e.name, e.kind, e.size, e.mtime_ns, e.caption) for e in entries]).encode()).hexdigest()


# --- the training CLI's data section (train.py: "data") ----------------------------------------


def training_size(data: dict) -> tuple[int, int]:
    return data.get("height", 256), data.get("width", 256)


def cached_size(data: dict) -> tuple[int, int]:
    """The size frames are encoded into the latent cache at: data.cache_height/cache_width, by default
    the training size (no crop augmentation)."""
    height, width = training_size(data)
    return data.get("cache_height", height), data.get("cache_width", width)


def clip_spec(data: dict, fps: float | None, size: tuple[int, int] | None = None) -> ClipSpec:
    """The config's clips: data.frames read at `fps` (None: the source rate), at `size` (height, width;
    default the training size), cut by data.crop and data.start; from a folder or from shards."""
    height, width = size or training_size(data)
    return ClipSpec(data.get("frames", DEFAULT_FRAMES), fps, height, width, data.get("crop", "center"),
                    data.get("start", "first"))


def data_folder(data: dict, seed: int, fps: float | None, size: tuple[int, int] | None = None) -> VideoFolder:
    """The config's data folder as clips of `clip_spec(data, fps, size)`."""
    return VideoFolder(data["folder"], clip_spec(data, fps, size), on_bad=data.get("on_bad", "stop"), seed=seed)


def dataset_items(model, vae, data: dict, mode, seed: int, world, regimes, encode_text=None):
    """Clips from the data folder at the cached size, encoded once (rank 0 first, the other ranks then
    reuse its cache) and read from it one clip at a time (a Dataset, not a list). Interpolation with both regimes reads clips at fps (T→4T) and at 4·fps (4T→16T)."""
    mode = mode_named(mode)
    rates = [(0, data.get("fps"))]
    if mode.has_regimes and 1 in regimes:   # data.fps is there: the run configuration's check
        rates = [(r, regime_fps(data["fps"], r)) for r in regimes]
    parts = []
    for regime, fps in rates:
        dataset = data_folder(data, seed, fps, cached_size(data))
        cache = Path(data.get("cache") or Path(data["folder"]) / ".videoldm_cache") / f"{mode}-{fps or 'source'}"
        constant = {"regime": torch.tensor(regime)} if mode.has_regimes else {}
        if world.is_main:   # rank 0 builds the cache, then every other rank reads it under rank 0's key
            found = folder_items(model, vae, dataset, mode, cache, encode_text=encode_text, extra=constant)
        barrier(world)
        key, unread = all_gathered(found.shards.key if world.is_main else None, world)[0], None
        if not world.is_main:
            try:
                found = folder_items(model, vae, dataset, mode, cache, encode_text=encode_text, extra=constant,
                                     built_by=("rank 0", key))
            except Exception as e:   # any error: the other ranks must learn of it here, not at a later collective
                unread = e
        failed = ranks_where(unread is not None, world)   # every rank stops, not those alone
        if failed:
            raise unread or TrainingError(f"rank(s) {', '.join(map(str, failed))} cannot read the latent cache rank 0 "
                                          f"built in '{cache}'; see their message.")
        parts.append(found)
    return parts[0] if len(parts) == 1 else ConcatDataset(parts)


def cached_batches(items, data: dict, batch_size: int, seed: int, world) -> StepBatches:
    """Each step's batch of cached clips, with the latent-space crop (clips cached larger than the
    training size) and data.flip drawn per clip and step; none when there is neither."""
    latent = tuple(items[0]["latents"].shape[-2:])
    augment = latent_augmentation(cached_size(data), training_size(data), latent, data.get("flip", False))
    if augment is not None and world.is_main:
        flip = ", flipped half the time" if augment.flip else ""
        print(f"augmentation: each step cuts every clip's {augment.height}x{augment.width} window from its "
              f"{latent[0]}x{latent[1]} cached latents{flip}", flush=True)
    return StepBatches(items, batch_size, seed=seed, augment=augment)
