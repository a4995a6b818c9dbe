"""The validation video of a training run (the run config's monitor.validate_every): every N steps
rank 0 samples a short clip per fixed prompt with the current adapter weights (EMA when kept), a
fixed seed and, for prediction and interpolation, fixed context frames / keyframes from the first
clips of the data; with the pack's own samplers, as a user samples the trained adapter (Extend
Video, Interpolate Keyframes, Video Upscale), decoded with the frozen VAE. The monitor
(videoldm_core.training.monitor) logs it beside the scalars.

Training goes on exactly as without it: the sampling model is a clone with its own copy of the
adapter, the global random state is restored afterwards (ComfyUI's noise seeds the global
generator), and the training UNet is loaded back as training left it."""

from __future__ import annotations

import dataclasses
import itertools

import torch

import comfy.sample

from ..videoldm_core.interpolation import FACTOR, REGIMES, regime_fps
from ..videoldm_core.training.modes import mode_named
from ..videoldm_core.training.objective import TrainingError
from ..videoldm_core.training.shards import ShardClips
from ..videoldm_core.training.trainer import PRECISIONS
from .interpolation import ADAPTERS_OWN, interpolate_keyframes
from .rollout import extend_video
from .temporal_adapter import apply_adapter, build_adapter_patcher
from .training_model import trained_state
from .video_upscale import GRID, upscale_video

SAMPLER, SCHEDULER = "euler", "normal"
DEFAULTS = {"frames": None, "steps": 10, "cfg": 5.0, "seed": 0}   # frames None: the training clips' length
NOT_SAMPLED = {"vae": "trains an autoencoder", "image": "pretrains the image UNet",
               "decoder": "trains the VAE decoder's temporal layers"}


def validation_settings(config: dict) -> dict | None:
    """monitor.validation with its defaults (the prompts: the run's prompt), or None when validation is off."""
    monitor = config.get("monitor", {})
    if not monitor.get("validate_every"):
        return None
    settings = {**DEFAULTS, **monitor.get("validation", {})}
    settings["prompts"] = list(settings.get("prompts") or [config.get("prompt", "")])
    return settings


def first_clips(batches, count: int, seed: int) -> list[dict]:
    """The data's first `count` clips as training reads them (latents in the model's latent space,
    low-res frames, regime), repeated when there are fewer: from the dataset of in-memory or cached
    clips (with one fixed draw of its augmentation), or from the first shards read on their own with
    centre crops, the training stream left untouched."""
    if hasattr(batches, "dataset"):
        n = len(batches.dataset)
        items = [batches.dataset[i] for i in range(min(count, n))]
        augment = getattr(batches, "augment", None)
        if augment is not None:
            items = [augment(item, torch.Generator().manual_seed(seed)) for item in items]
    else:
        stream = batches.clips
        reader = ShardClips(stream.urls, dataclasses.replace(stream.spec, crop="center", start="first"),
                            seed=stream.seed, shuffle=0, passes=1)
        decoded = list(itertools.islice(iter(reader), count))
        if not decoded:
            raise TrainingError("the validation video needs a clip of the data; the shards gave none that decodes.")
        batch = batches.encode(decoded)
        items = [{k: v[i] for k, v in batch.items() if isinstance(v, torch.Tensor)} for i in range(len(decoded))]
    return [items[i % len(items)] for i in range(count)]


class ValidationVideos:
    """`(trainer) -> (N, T, H, W, 3)` in [0, 1]: one clip per prompt, sampled as the mode's node samples."""

    def __init__(self, base, text_encoder, vae, adapter, spec, mode, batches, settings: dict, precision: str, restore,
                 fps: float | None = None):
        """`base`: the frozen MODEL the adapter trains on; `text_encoder`: its CLIP; `restore()`: loads the
        training UNet back; `fps`: data.fps (None: the source rate, logged as 8)."""
        self.base, self.text_encoder, self.vae, self.adapter, self.spec = base, text_encoder, vae, adapter, spec
        self.mode, self.batches, self.settings = mode_named(mode), batches, settings
        self.dtype, self.restore = PRECISIONS[precision], restore
        self.fps = fps or 8.0
        self._conditioning = self._clips = None

    def prepare(self):
        """The prompts' conditioning and the context clips, once, at the first validation."""
        if self._conditioning is None:
            encode = lambda text: self.text_encoder.encode_from_tokens_scheduled(self.text_encoder.tokenize(text))
            self._conditioning = [encode(p) for p in self.settings["prompts"]], encode("")
            self._clips = first_clips(self.batches, len(self.settings["prompts"]), self.settings["seed"])

    def __call__(self, trainer) -> torch.Tensor:
        weights = trained_state(self.adapter, trainer)   # EMA weights when kept
        device = self.base.load_device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
            self.prepare()
            model = apply_adapter(self.base, build_adapter_patcher(self.spec, weights, "validation"), "validation")
            positives, negative = self._conditioning
            videos = []
            for positive, clip in zip(positives, self._clips):
                with torch.autocast(device.type, dtype=self.dtype, enabled=self.dtype is not None):
                    latents = self.sample(model, positive, negative, clip)
                videos.append(self.vae.decode(latents)[..., :3].float().clamp(0, 1).cpu())
            del model
        self.restore()
        return torch.stack(videos)

    @property
    def video_fps(self) -> float:
        """Frames per second of the logged video: the clips' rate. Interpolation takes every 4th frame
        of a clip as a keyframe and makes the clip's frames again, so its video too plays at the clips'
        rate: data.fps, or 4 x data.fps for clips of regime 4T-to-16T."""
        return regime_fps(self.fps, self._regime() if self.mode.has_regimes else 0)

    def _regime(self) -> int:
        return int(self._clips[0].get("regime", 0)) if self._clips else 0

    def sample(self, model, positive, negative, clip: dict) -> torch.Tensor:
        """One clip's latents (unscaled, as a LATENT holds them)."""
        s = self.settings
        given = self.base.model.process_latent_out(clip["latents"].float())   # the clip as a LATENT
        frames = s["frames"] or given.shape[0]
        common = dict(seed=s["seed"], steps=s["steps"], cfg=s["cfg"], sampler_name=SAMPLER, scheduler=SCHEDULER)
        if self.mode.needs_context_encoder and not self.mode.has_regimes:   # prediction: the first S frames given
            count = max(max(self.spec.context_frames, default=1), 1)
            return extend_video(model, positive, negative, {"samples": given[:count]}, segments=1,
                                segment_length=frames, context_frames=count, **common)["samples"]
        if self.mode.has_regimes:   # interpolation: every 4th frame of the clip is a keyframe
            keyframes = given[:frames:FACTOR]
            if keyframes.shape[0] < 2:
                raise TrainingError(f"the interpolation validation video takes every 4th frame of a clip as a keyframe "
                                    f"and needs 2; clips of {given.shape[0]} frames (validation.frames {frames}) give "
                                    f"{keyframes.shape[0]}. Use clips of at least 5 frames.")
            regime = [name for name, label in REGIMES.items() if label == int(clip.get("regime", 0))][0]
            out, _ = interpolate_keyframes(model, positive, negative, {"samples": keyframes}, regime, True, ADAPTERS_OWN,
                                           keyframes.shape[0], fps=self.video_fps / FACTOR, **common)   # keyframe rate
            return out["samples"]
        if self.mode.is_upscaler:   # the clip's low-res frames, 4x
            low = ((clip["low_res"][:frames].float() + 1) / 2).movedim(1, -1)
            tile = -(-max(low.shape[1:3]) // GRID) * GRID
            return upscale_video(model, positive, negative, low, 0.0, tile_size=tile, tile_overlap=0,
                                 chunk_length=low.shape[0], chunk_overlap=0, **common)["samples"]
        latent = torch.zeros(frames, *given.shape[1:])
        return comfy.sample.sample(model, comfy.sample.prepare_noise(latent, s["seed"]), s["steps"], s["cfg"], SAMPLER,
                                   SCHEDULER, positive, negative, latent, disable_pbar=True, seed=s["seed"])


def validation_note(mode: str) -> str:
    """What a run of a mode that samples nothing logs instead of a validation video."""
    return (f"monitor.validate_every: mode {mode!r} {NOT_SAMPLED[mode]}, not temporal layers to sample with; no "
            "validation video is logged (the TensorBoard scalars are).")

