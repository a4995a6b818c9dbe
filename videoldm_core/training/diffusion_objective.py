"""The denoising objective for the temporal layers, in every mode of the paper (§3, §3.1.1, §3.2):

- "temporal": the base video model, E‖y − f_θ,φ(x_t; c, t)‖² over whole clips;
- "prediction": 0, 1 or 2 context frames per clip, c_S = (m_S ⊙ z, m_S), loss on the T − S
  frames to predict; S = 0 is the context-dropped branch context guidance needs;
- "interpolation": keyframes every 4th frame given, the rest predicted; the regime label
  (T→4T or 4T→16T) and a conditioning-augmentation level z + level·ε on the keyframes;
- "upscaler": random patches (the same crop in every frame) of the SD x4 upscaler's latents,
  with the low-resolution frames noise-augmented to a random level that the model is told.

In every mode a share of the clips (`text_dropout`) is marked for the empty prompt, as AnimateDiff's
training does (10% of captions in its configs; sgm's conditioner drops 10% too, to zeros): the
temporal layers then also learn the unconditional branch classifier-free guidance runs them in.

The frozen base model is reached through a `denoiser(x_t, t, num_videos, conditioning)` callable
the host supplies; x_t and the prediction are ((b t), c, h, w), one timestep per clip. Randomness
is drawn per clip from its own seed (batch["sample_seeds"]), so a global batch split over ranks
draws exactly what one process would.
"""

from __future__ import annotations

from typing import Callable

import torch
from einops import rearrange, repeat

from ..context import context_input, context_mask
from ..interpolation import FACTOR, MAX_AUGMENTATION, augment_keyframes, check_augmentation_level, interpolation_labels, keyframe_positions
from .crops import random_crop
from .modes import INTERPOLATION, PREDICTION, TEMPORAL, UPSCALER, Mode, mode_named
from .objective import Held, Phase, TrainingError, check_text_dropout, dropped_text
from .schedule import NoiseSchedule

Denoiser = Callable[[torch.Tensor, torch.Tensor, int, dict], torch.Tensor]


def check_mode(spec, mode: str | Mode, regimes=(0, 1), context_frames=None) -> Mode:
    """The Mode, or an error for a mode the adapter cannot learn, before any data is read."""
    mode = mode_named(mode)
    name = f"temporal adapter ({spec.family}, {spec.placement})"
    if mode.needs_context_encoder and not spec.has_context_encoder:
        raise TrainingError(f"mode '{mode}' needs an adapter with a context encoder; the {name} has none. "
                            "Create the adapter with context frames (e.g. 0, 1, 2).")
    if mode.has_regimes and set(regimes) != {0} and not spec.has_interpolation_embedding:
        raise TrainingError(f"mode '{mode}' with regimes {sorted(regimes)} needs an adapter with an interpolation "
                            f"label embedding; the {name} has none. Train regime 0 (T→4T) only, or create it with one.")
    if mode.is_upscaler != (spec.family == UPSCALER.family.name):
        family = UPSCALER.family.name
        expected = f"an {family} adapter" if mode.is_upscaler else f"mode '{UPSCALER}' for an {family} adapter"
        raise TrainingError(f"mode '{mode}' with a {name}: expected {expected}.")
    if mode is PREDICTION:
        bad = [s for s in (context_frames or ()) if s < 0]
        if bad:
            raise TrainingError(f"expected context frame counts ≥ 0, found {bad}.")
    return mode


class DiffusionPhase(Phase):
    name = "adapter"

    def __init__(self, adapter, denoiser: Denoiser, schedule: NoiseSchedule, mode: str | Mode = TEMPORAL,
                 context_frames=None, regimes=(0, 1), max_augmentation: float = MAX_AUGMENTATION, patch: int | None = None,
                 augment_schedule: NoiseSchedule | None = None, max_noise_level: int = 350, text_dropout: float = 0.0):
        super().__init__()
        mode = mode_named(mode)
        self.text_dropout = check_text_dropout(text_dropout)
        context_frames = tuple(context_frames if context_frames is not None else
                               (adapter.spec.context_frames or PREDICTION.default_context_frames))
        check_mode(adapter.spec, mode, regimes, context_frames)
        check_augmentation_level(max_augmentation)
        if mode.is_upscaler and augment_schedule is None:
            raise TrainingError("mode 'upscaler' needs the upscaler's noise-augmentation schedule for the low-res frames.")
        self.adapter = adapter                 # registered: the only trained parameters
        self.denoiser, self.schedule, self.mode = Held(denoiser), schedule, mode
        self.context_frames, self.regimes = context_frames, tuple(regimes)
        # keyframes are augmented only for an adapter told the level: one without the embedding records
        # no augmentation range (Interpolate Keyframes then gives it clean keyframes)
        if not adapter.spec.has_interpolation_embedding:
            max_augmentation = 0.0
        self.max_augmentation, self.patch = max_augmentation, patch
        self.augment_schedule, self.max_noise_level = augment_schedule, max_noise_level

    def forward(self, batch: dict, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
        z0 = batch["latents"]
        b, t = z0.shape[:2]
        if t < 2:
            raise TrainingError(f"expected clips of at least 2 frames to train temporal layers, found {t}.")
        rngs = [torch.Generator().manual_seed(int(s)) for s in batch["sample_seeds"]]
        low_res = batch.get("low_res")
        if self.mode is UPSCALER:
            z0, low_res = same_crop(z0, low_res, rngs, self.patch)
        noise = torch.stack([torch.randn(z0.shape[1:], generator=g) for g in rngs]).to(z0)
        steps = torch.cat([self.schedule.sample_timesteps(1, g) for g in rngs])
        frame_steps = repeat(steps, "b -> (b t)", t=t)
        x0, eps = rearrange(z0, "b t c h w -> (b t) c h w"), rearrange(noise, "b t c h w -> (b t) c h w")
        x_t = self.schedule.add_noise(x0, eps, frame_steps)
        conditioning, weights, logs = self._conditioning(z0, low_res, rngs, batch.get("regime"))
        if batch.get("text") is not None:
            conditioning["text"] = repeat(batch["text"], "b l d -> (b t) l d", t=t)
        if self.text_dropout > 0:   # drawn after the mode's conditioning: without dropout a clip draws as before
            dropped = dropped_text(rngs, self.text_dropout)
            conditioning["text_dropped"] = repeat(dropped, "b -> (b t)", t=t)
            logs = {**logs, "text_dropped": dropped.float().mean().item()}
        prediction = self.denoiser(x_t, frame_steps.to(z0.device), b, conditioning)
        target = self.schedule.target(x0, eps, frame_steps)
        per_frame = ((prediction.float() - target.float()) ** 2).mean(dim=(1, 2, 3)).reshape(b, t)
        w = weights.to(per_frame)
        # each clip's mean over its frames to predict, then the mean over clips: every clip counts the same
        # (prediction from 2 context frames as much as from 0), and ranks holding parts of a global batch
        # average to what one process computes for it
        loss = ((per_frame * w).sum(dim=1) / w.sum(dim=1)).mean()
        return loss, {"loss": loss.item(), **logs}

    def _conditioning(self, z0, low_res, rngs, regimes=None):
        """(conditioning, per-frame loss weights (B, T), logged numbers) for this mode."""
        b, t = z0.shape[:2]
        ones = torch.ones(b, t)
        if self.mode is TEMPORAL:
            return {}, ones, {}
        if self.mode is UPSCALER:
            conditioning, level = augmented_low_res(low_res, rngs, self.augment_schedule, self.max_noise_level)
            return conditioning, ones, {"noise_level": level.float().mean().item()}
        if self.mode is PREDICTION:
            given = [self.context_frames[int(torch.randint(0, len(self.context_frames), (1,), generator=g))] for g in rngs]
            for s in given:
                if s >= t:
                    raise TrainingError(f"{s} context frames need clips longer than {t} frames.")
            masks = torch.stack([context_mask(t, range(s)) for s in given])
            c_s = torch.cat([context_input(z, m) for z, m in zip(z0, masks)])
            return {"c_s": c_s}, 1.0 - masks, {"context_frames": sum(given) / b}
        assert self.mode is INTERPOLATION
        return self._interpolation(z0, rngs, regimes)

    def _interpolation(self, z0, rngs, given_regimes=None):
        """`given_regimes` (B,): the regime each clip was sampled for (its frame rate), else drawn."""
        b, t = z0.shape[:2]
        if (t - 1) % FACTOR:
            raise TrainingError(f"interpolation clips need 4K − 3 frames (keyframes at 0, 4, 8, ...), found {t}; "
                                f"use {t - (t - 1) % FACTOR} or {t - (t - 1) % FACTOR + FACTOR}.")
        positions = keyframe_positions((t - 1) // FACTOR + 1)
        mask = context_mask(t, positions)
        c_s, labels = [], []
        for i, (z, g) in enumerate(zip(z0, rngs)):
            drawn = self.regimes[int(torch.randint(0, len(self.regimes), (1,), generator=g))]
            regime = drawn if given_regimes is None else int(given_regimes[i])
            level = float(torch.rand((), generator=g)) * self.max_augmentation
            c_s.append(context_input(augment_keyframes(z, level, g), mask))
            labels.append(interpolation_labels(t, regime, level))
        weights = (1.0 - mask).expand(b, t)
        return {"c_s": torch.cat(c_s), "labels": torch.cat(labels).to(z0)}, weights, {}


def same_crop(z0, low_res, rngs, patch: int | None = None):
    """Patch training (paper §3.3): one random crop per clip, the same in every frame, of latents
    (B, T, C, h, w) and the low-res frames (B, T, 3, h, w) at the latent size."""
    if low_res is None or low_res.shape[:2] != z0.shape[:2] or low_res.shape[-2:] != z0.shape[-2:]:
        found = None if low_res is None else tuple(low_res.shape)
        raise TrainingError(f"upscaler training expects low-res frames (B, T, 3, h, w) at the latent size "
                            f"{tuple(z0.shape[-2:])} of latents {tuple(z0.shape)}, found {found}.")
    z0, low_res = random_crop([z0, low_res], rngs, patch or min(z0.shape[-2:]), "latents")
    return z0, low_res


def augmented_low_res(low_res, rngs, augment_schedule: NoiseSchedule, max_noise_level: int):
    """The x4 upscaler's conditioning: low-res frames (B, T, 3, h, w) noised to a random level
    0..max_noise_level per clip with the upscaler's own augmentation schedule, the level as the
    class label. Returns ({"concat", "y"} per frame row, the levels (B,))."""
    t = low_res.shape[1]
    level = torch.cat([torch.randint(0, max_noise_level + 1, (1,), generator=g) for g in rngs])
    noise = torch.stack([torch.randn(x.shape, generator=g) for x, g in zip(low_res, rngs)]).to(low_res)
    frames = rearrange(low_res, "b t c h w -> (b t) c h w")
    levels = repeat(level, "b -> (b t)", t=t)
    augmented = augment_schedule.add_noise(frames, rearrange(noise, "b t c h w -> (b t) c h w"), levels)
    return {"concat": augmented, "y": levels.to(low_res.device)}, level
