"""The discrete noise schedule a temporal adapter was trained with, and where its norms ran.

Public motion modules were not all trained with their base model's own schedule: AnimateDiff's
SD1.5 modules used β linear in β (diffusers `linear`), while SD1.5's own β is linear in √β
(diffusers `scaled_linear`); the SDXL beta module ended at β = 0.020 where SDXL ends at 0.012;
AnimateLCM is a consistency model sampled with LCM. A `BetaSchedule` states one such schedule in
the host's terms (ComfyUI's `make_beta_schedule`: `linear` is linear in √β, `sqrt_linear` linear
in β) and computes its k-diffusion sigmas σ_t = √((1 − ᾱ_t) / ᾱ_t).

`TRAINED_WITH` records, per public format (the adapter spec's `source`), the schedule and the
clip-wide norms of the original code; README "Public weights" cites the config lines.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import NamedTuple, Optional

import torch

from .errors import VideoLDMError

BETA_KINDS = ("linear", "sqrt_linear")
CLIP_NORMS = ("resblock", "output")   # the spatial ResBlocks' two GroupNorms; the UNet's final output norm


class ScheduleError(VideoLDMError):
    """A noise schedule that cannot be built or does not fit the model."""


@dataclass(frozen=True)
class BetaSchedule:
    """β_t for t = 0..timesteps−1 from beta_start to beta_end, linear in √β (`linear`) or in β
    (`sqrt_linear`); `lcm_timesteps`: a latent consistency model, sampled on that many of the
    timesteps (every timesteps/lcm_timesteps-th, as LCM's `original_inference_steps`)."""

    betas: str
    beta_start: float
    beta_end: float
    timesteps: int = 1000
    lcm_timesteps: Optional[int] = None

    def __post_init__(self):
        if self.betas not in BETA_KINDS:
            raise ScheduleError(f"noise_schedule: expected betas one of {BETA_KINDS}, found {self.betas!r}.")
        for name in ("beta_start", "beta_end"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 < value < 1.0:
                raise ScheduleError(f"noise_schedule: expected {name} in (0, 1), found {value!r}.")
        if self.beta_end < self.beta_start:
            raise ScheduleError(f"noise_schedule: expected beta_end >= beta_start, found {self.beta_start} > {self.beta_end}.")
        if not isinstance(self.timesteps, int) or not 2 <= self.timesteps <= 100_000:
            raise ScheduleError(f"noise_schedule: expected timesteps an integer in [2, 100000], found {self.timesteps!r}.")
        if self.lcm_timesteps is not None and (not isinstance(self.lcm_timesteps, int)
                                               or not 1 <= self.lcm_timesteps <= self.timesteps):
            raise ScheduleError(f"noise_schedule: expected lcm_timesteps an integer in [1, {self.timesteps}] or null, "
                                f"found {self.lcm_timesteps!r}.")
        sigmas = self.sigmas().float()   # as the sampling keeps them
        if not bool(torch.isfinite(sigmas).all()):   # betas near 1 leave no signal: infinite noise levels
            raise ScheduleError(f"noise_schedule: {self.betas} {self.beta_start}-{self.beta_end} over {self.timesteps} "
                                f"timesteps gives {int((~torch.isfinite(sigmas)).sum())} infinite noise levels; "
                                "expected a schedule whose signal never vanishes.")

    @classmethod
    def from_dict(cls, data) -> "BetaSchedule":
        if not isinstance(data, dict):
            raise ScheduleError(f"noise_schedule: expected an object or null, found {type(data).__name__}.")
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise ScheduleError(f"noise_schedule: unknown fields {unknown}; expected {sorted(cls.__dataclass_fields__)}.")
        try:
            return cls(**data)
        except TypeError as e:
            raise ScheduleError(f"noise_schedule: incomplete ({e}).") from None

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def label(self) -> str:
        """The node's name for it, e.g. `sqrt_linear 0.00085-0.012` or `lcm 100 sqrt_linear 0.00085-0.012`."""
        text = f"{self.betas} {self.beta_start:g}-{self.beta_end:g}"
        if self.timesteps != 1000:
            text += f" T{self.timesteps}"
        return text if self.lcm_timesteps is None else f"lcm {self.lcm_timesteps} {text}"

    def beta_values(self) -> torch.Tensor:
        if self.betas == "linear":
            return torch.linspace(self.beta_start ** 0.5, self.beta_end ** 0.5, self.timesteps, dtype=torch.float64) ** 2
        return torch.linspace(self.beta_start, self.beta_end, self.timesteps, dtype=torch.float64)

    def sigmas(self) -> torch.Tensor:
        """σ_t of every training timestep (float64), before any LCM subsampling."""
        alphas_cumprod = torch.cumprod(1.0 - self.beta_values(), dim=0)
        return ((1.0 - alphas_cumprod) / alphas_cumprod).sqrt()


SD_SCHEDULE = BetaSchedule("linear", 0.00085, 0.012)                  # SD1.x/2.x/XL's own (diffusers scaled_linear)
ANIMATEDIFF_SCHEDULE = BetaSchedule("sqrt_linear", 0.00085, 0.012)    # diffusers linear
ANIMATEDIFF_SDXL_SCHEDULE = BetaSchedule("linear", 0.00085, 0.020)
ANIMATELCM_SCHEDULE = BetaSchedule("sqrt_linear", 0.00085, 0.012, lcm_timesteps=100)

NAMED_SCHEDULES = {s.label: s for s in (SD_SCHEDULE, ANIMATEDIFF_SCHEDULE, ANIMATEDIFF_SDXL_SCHEDULE, ANIMATELCM_SCHEDULE)}


class TrainedWith(NamedTuple):
    """How the original code ran a public format: its schedule (None: the base model's own), the
    spatial norms it ran over all frames of a clip, and its motion modules' own norm."""

    noise_schedule: Optional[BetaSchedule]
    clip_norms: tuple
    motion_norm: str = "frame"


TRAINED_WITH = {
    "animatediff-v1": TrainedWith(ANIMATEDIFF_SCHEDULE, CLIP_NORMS),
    "animatediff-v2": TrainedWith(ANIMATEDIFF_SCHEDULE, ()),
    "animatediff-v3": TrainedWith(ANIMATEDIFF_SCHEDULE, ()),
    "animatediff-sdxl": TrainedWith(ANIMATEDIFF_SDXL_SCHEDULE, (), "video"),
    "animatediff-hotshotxl": TrainedWith(SD_SCHEDULE, CLIP_NORMS),
    "animatediff-animatelcm": TrainedWith(ANIMATELCM_SCHEDULE, ()),
}


def trained_with(source: str) -> TrainedWith:
    """The recipe of a public format; native and SVD adapters: the base model's own schedule
    (SVD's continuous EDM schedule has no discrete β to state), every norm per frame."""
    return TRAINED_WITH.get(source, TrainedWith(None, ()))


def check_clip_norms(clip_norms) -> None:
    if not isinstance(clip_norms, (list, tuple)) or any(n not in CLIP_NORMS for n in clip_norms):
        raise ScheduleError(f"clip_norms: expected a list drawn from {CLIP_NORMS}, found {clip_norms!r}.")
