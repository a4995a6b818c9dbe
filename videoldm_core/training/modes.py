"""The training modes of the temporal layers (Video LDM §3, §3.1.1), as small types: what a mode
needs of an adapter and of its data, written once."""

from __future__ import annotations

from dataclasses import dataclass

from ..families import SD_X4_UPSCALER, Family
from .objective import TrainingError

DEFAULT_CONTEXT_FRAMES = (0, 1, 2)   # S per clip for a context encoder: 0 is context guidance's dropped branch


@dataclass(frozen=True)
class Mode:
    name: str
    needs_context_encoder: bool = False   # trains on given frames c_S (prediction, interpolation)
    has_regimes: bool = False             # interpolation's T→4T / 4T→16T label
    family: Family | None = None          # the only family it trains; None: any image family

    @property
    def default_context_frames(self) -> tuple[int, ...]:
        return DEFAULT_CONTEXT_FRAMES if self.needs_context_encoder else ()

    @property
    def is_upscaler(self) -> bool:
        return self.family is SD_X4_UPSCALER

    def __str__(self) -> str:
        return self.name


TEMPORAL = Mode("temporal")
PREDICTION = Mode("prediction", needs_context_encoder=True)
INTERPOLATION = Mode("interpolation", needs_context_encoder=True, has_regimes=True)
UPSCALER = Mode("upscaler", family=SD_X4_UPSCALER)
MODES = (TEMPORAL, PREDICTION, INTERPOLATION, UPSCALER)
MODE_NAMES = tuple(m.name for m in MODES)


def mode_named(mode: str | Mode) -> Mode:
    if isinstance(mode, Mode):
        return mode
    for m in MODES:
        if m.name == mode:
            return m
    raise TrainingError(f"expected a training mode in {MODE_NAMES} (or 'decoder' for a temporal VAE), found {mode!r}.")
