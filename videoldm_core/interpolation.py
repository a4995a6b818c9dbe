"""Keyframe interpolation in latent space (Video LDM §3.1.1 "Temporal interpolation").

T keyframes become 4T − 3 frames: the keyframes sit at every 4th position and the model fills
the three frames between each pair, conditioned through the same mask mechanism as prediction
(c_S with the keyframes given). A binary label tells the model the regime, T → 4T (1.875 → 7.5 fps
in the paper) or 4T → 16T (7.5 → 30 fps), and conditioning augmentation puts noise of a known
level on the keyframes, the level being an input of the model too. Both enter the temporal
ResBlocks through their timestep embedding, from a zero-initialised `InterpolationEmbedding`.

Long keyframe sequences go in windows of a few keyframes that share one keyframe with the next
window; with the keyframes kept, the shared keyframe is the seam, so windows join exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .context import ContextError
from .errors import VideoLDMError, shown
from .layer_factory import zero_
from .positional import sinusoidal_embedding

FACTOR = 4
MAX_AUGMENTATION = 0.25   # the trainer's conditioning-augmentation levels: uniform in [0, 0.25]
REGIMES = {"T-to-4T": 0, "4T-to-16T": 1}   # label values: the paper's binary regime label
LEGACY_REGIMES = {"T→4T": "T-to-4T", "4T→16T": "4T-to-16T"}   # the names before plain ASCII; saved graphs keep them


class InterpolationError(VideoLDMError):
    """Keyframes or settings that interpolation cannot use."""


def dense_length(num_keyframes: int, factor: int = FACTOR) -> int:
    return factor * (num_keyframes - 1) + 1


def keyframe_positions(num_keyframes: int, factor: int = FACTOR) -> list[int]:
    return [factor * i for i in range(num_keyframes)]


def regime_fps(fps: float, regime: int, factor: int = FACTOR) -> float:
    """The frame rate a regime's training clips are read at, for videos of keyframes at `fps`: T→4T
    learns from clips at fps, 4T→16T from clips at 4·fps (its keyframes are once interpolated)."""
    return fps * factor ** regime


def regime_label(regime: str) -> int:
    """The label of a regime name (a legacy name too)."""
    regime = LEGACY_REGIMES.get(regime, regime) if isinstance(regime, str) else regime
    if not isinstance(regime, str) or regime not in REGIMES:
        raise InterpolationError(f"expected a regime in {list(REGIMES)}, found {shown(regime)}.")
    return REGIMES[regime]


def check_regime_name(regime) -> bool | str:
    """True for a regime name the node reads; else the message (the words core's combo check uses)."""
    if isinstance(regime, str) and (regime in REGIMES or regime in LEGACY_REGIMES):
        return True
    return f"regime {shown(regime)} not in list {list(REGIMES)}"


def check_keyframes(latents) -> torch.Tensor:
    """At least 2 keyframes of one size: (T, C, H, W)."""
    if getattr(latents, "is_nested", False):
        shapes = [tuple(t.shape) for t in latents.unbind()]
        raise InterpolationError(f"expected keyframes of one size, found a nested latent of shapes {shapes}; "
                                 "resize them to one size first.")
    if latents.ndim != 4:
        raise InterpolationError(f"expected keyframe latents (T, C, H, W), found shape {tuple(latents.shape)}.")
    if latents.shape[0] < 2:
        raise InterpolationError(f"expected at least 2 keyframes to interpolate between, found {latents.shape[0]}.")
    return latents


@dataclass(frozen=True)
class KeyframeWindow:
    first: int        # index of its first keyframe
    count: int        # keyframes in the window

    @property
    def dense_start(self) -> int:
        return FACTOR * self.first


def keyframe_windows(num_keyframes: int, window: int) -> list[KeyframeWindow]:
    """Windows of `window` keyframes (the last may be shorter), consecutive ones sharing one keyframe."""
    if window < 2:
        raise InterpolationError(f"expected windows of at least 2 keyframes, found {window}.")
    out, first = [], 0
    while True:
        count = min(window, num_keyframes - first)
        out.append(KeyframeWindow(first, count))
        if first + count >= num_keyframes:
            return out
        first += count - 1


def check_augmentation_level(level: float):
    if not 0.0 <= level <= 1.0:
        raise InterpolationError(f"expected an augmentation level in [0, 1], found {level}.")


def augment_keyframes(latents: torch.Tensor, level: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Conditioning augmentation: z + level · ε on the keyframes (level 0 leaves them exact)."""
    check_augmentation_level(level)
    if level == 0.0:
        return latents
    noise = torch.randn(latents.shape, generator=generator, dtype=torch.float32).to(latents)
    return latents + level * noise


def interpolation_labels(num_frames: int, regime: int, level: float) -> torch.Tensor:
    """Per-frame (regime, augmentation level) rows, the model cond the temporal layers read."""
    return torch.tensor([[float(regime), float(level)]]).expand(num_frames, 2).clone()


class InterpolationEmbedding(nn.Module):
    """Regime label and augmentation level → an addition to the temporal ResBlocks' timestep
    embedding. Zero-initialised outputs: a fresh embedding changes nothing."""

    def __init__(self, emb_channels: int, regimes: int = 2, operations=nn):
        super().__init__()
        self.regimes = regimes
        self.regime_embed = operations.Embedding(regimes, emb_channels)
        zero_(self.regime_embed)
        self.level_embed = nn.Sequential(operations.Linear(emb_channels, emb_channels), nn.SiLU(),
                                         zero_(operations.Linear(emb_channels, emb_channels)))
        self.emb_channels = emb_channels

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        """labels ((b t), 2): regime and level → ((b t), emb_channels)."""
        regime = labels[:, 0].round().long()
        if regime.min() < 0 or regime.max() >= self.regimes:
            raise ContextError(f"regime labels must lie in 0..{self.regimes - 1}, found {regime.unique().tolist()}.")
        level = sinusoidal_embedding(labels[:, 1].float() * 1000.0, self.emb_channels)
        return self.regime_embed(regime).float() + self.level_embed(level).float()
