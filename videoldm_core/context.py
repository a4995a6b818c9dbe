"""Context frames for prediction (Video LDM §3.1.1, "Prediction models for long-term generation").

The model is told which of the T frames are given through a binary temporal mask m_S and sees
c_S = (m_S ⊙ z, m_S): the given latents with the others zeroed, and the mask as one more channel.
A learned downsampling (`ContextEncoder`) turns c_S into one feature map per UNet resolution; each
temporal layer adds its own zero-initialised projection of the map at its resolution to its input.

The encoder has no biases and its activation keeps 0 at 0, so c_S = 0 (no frame given) yields
exactly zero features at any weights: "no context" is the same computation as an adapter without
an encoder, bit for bit. That is also what guidance's context-dropped branch runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import torch
from torch import nn

from .errors import VideoLDMError, shown
from .limits import check_finite_input


class ContextError(VideoLDMError):
    """Context frames that do not fit the video or the model."""


def checked_video_latent(latents: torch.Tensor, node: str, name: str, channels: int | None = None) -> torch.Tensor:
    """A LATENT input's samples as one video, (frames, channels, height, width), with `channels`
    (the model family's latent channels) when given and finite values; refused before any sampling,
    naming the node and the input."""
    if getattr(latents, "is_nested", False):
        raise ContextError(f"{node}: {name}: expected latents of one size, found a nested latent of shapes "
                           f"{[tuple(t.shape) for t in latents.unbind()]}; resize the frames to one size first.")
    if latents.ndim != 4:
        raise ContextError(f"{node}: {name}: expected image latents (frames, channels, height, width), found shape "
                           f"{tuple(latents.shape)}; encode the frames with an image VAE (a video model's 5-D latent "
                           "is not this layout).")
    if channels is not None and latents.shape[1] != channels:
        raise ContextError(f"{node}: {name}: the model's latents have {channels} channels, found {latents.shape[1]} "
                           f"(shape {tuple(latents.shape)}); encode the frames with the VAE of the model's family.")
    check_finite_input(latents, node, name)
    return latents


def context_positions(spec: str, num_given: int, num_frames: int) -> list[int]:
    """Where `num_given` frames go in a video of `num_frames`: "start", "end", or a comma list of
    indices (negative ones count from the end), e.g. "0, -1" for the first and last frame."""
    text = spec.strip().lower()
    if text == "start":
        positions = list(range(num_given))
    elif text == "end":
        positions = list(range(num_frames - num_given, num_frames))
    else:
        positions = [p + num_frames if p < 0 else p for p in listed_positions(spec)]
        if len(positions) != num_given:
            raise ContextError(f"{num_given} context frames need {num_given} positions, found {len(positions)} in {shown(spec)}.")
    check_positions(positions, num_frames)
    return positions


def listed_positions(spec: str) -> list[int] | None:
    """The frame indices of a positions spec as written (negative ones too), or None for 'start' and
    'end', whose positions depend on how many frames are given."""
    text = spec.strip().lower()
    if text in ("start", "end"):
        return None
    try:
        return [int(p) for p in text.replace(" ", "").split(",") if p != ""]
    except ValueError:
        raise ContextError(f"expected positions 'start', 'end' or comma-separated frame indices, found {shown(spec)}.") from None


def check_positions(positions: Sequence[int], num_frames: int):
    """S given frames must leave at least one frame to predict: S < T, indices unique and in range."""
    if len(positions) >= num_frames:
        raise ContextError(f"expected fewer context frames than video frames (S < T), found S={len(positions)} "
                           f"for T={num_frames}; nothing would be left to generate.")
    bad = [p for p in positions if not 0 <= p < num_frames]
    if bad:
        raise ContextError(f"context positions must lie in 0..{num_frames - 1}, found {shown(bad)}.")
    if len(set(positions)) != len(positions):
        raise ContextError(f"context positions must be distinct, found {shown(list(positions))}.")


def context_mask(num_frames: int, positions: Iterable[int]) -> torch.Tensor:
    """m_S: (T,) with 1 at the given frames and 0 at the frames to predict."""
    positions = list(positions)
    check_positions(positions, num_frames)
    mask = torch.zeros(num_frames)
    mask[positions] = 1.0
    return mask


def context_input(latents: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """c_S = (m_S ⊙ z, m_S) for latents z (T, C, H, W): (T, C + 1, H, W)."""
    if latents.ndim != 4 or mask.shape != (latents.shape[0],):
        raise ContextError(f"expected latents (T, C, H, W) and a mask (T,), found {tuple(latents.shape)} and {tuple(mask.shape)}.")
    m = mask.to(latents)[:, None, None, None]
    return torch.cat([latents * m, m.expand(-1, 1, *latents.shape[2:])], dim=1)


def place_frames(given: torch.Tensor, positions: Sequence[int], num_frames: int) -> torch.Tensor:
    """A (T, C, H, W) latent with `given` at `positions` and zeros elsewhere."""
    out = given.new_zeros(num_frames, *given.shape[1:])
    out[list(positions)] = given
    return out


@dataclass(frozen=True)
class VideoContext:
    """Given frames of a T-frame video: `latents` (T, C, H, W) holds them at `positions` (zeros
    elsewhere), in the latent space of the VAE that made them (before the model's scaling)."""

    latents: torch.Tensor
    positions: tuple

    def __post_init__(self):
        check_positions(self.positions, self.latents.shape[0])

    @property
    def num_frames(self) -> int:
        return self.latents.shape[0]

    @property
    def first_new_frame(self) -> int:
        """The first frame the sampler makes (not given): what a preview of the run shows."""
        return next((i for i in range(self.num_frames) if i not in self.positions), 0)

    @property
    def mask(self) -> torch.Tensor:
        return context_mask(self.num_frames, self.positions)

    def check_fits(self, latent_shape: Sequence[int]):
        """The latent being sampled must have the context's frame count, channels, height and width."""
        expected = tuple(self.latents.shape)
        if tuple(latent_shape) != expected:
            names = ("frames", "channels", "height", "width")
            detail = ", ".join(f"{n} {e} vs {f}" for n, e, f in zip(names, expected, latent_shape) if e != f) or "rank"
            raise ContextError(f"the context frames do not fit the latent being sampled: expected (T, C, H, W) = "
                               f"{expected}, found {tuple(latent_shape)} ({detail}).")


class ContextEncoder(nn.Module):
    """The learned downsampling of c_S: a stem at latent resolution, then one stride-2 stage per
    UNet level below it (the UNet's own downsampling arithmetic, so odd sizes line up). Every map
    has `width` channels; temporal layers project from it. Bias-free, SiLU: zero in, zero out."""

    def __init__(self, in_channels: int, width: int = 64, levels: int = 4, operations=nn):
        super().__init__()
        conv = dict(kernel_size=3, padding=1, bias=False)
        self.stem = nn.Sequential(operations.Conv2d(in_channels, width, **conv), nn.SiLU(),
                                  operations.Conv2d(width, width, **conv))
        self.down = nn.ModuleList(
            nn.Sequential(nn.SiLU(), operations.Conv2d(width, width, stride=2, **conv), nn.SiLU(),
                          operations.Conv2d(width, width, **conv))
            for _ in range(levels - 1))

    def forward(self, c_s: torch.Tensor) -> dict[tuple[int, int], torch.Tensor]:
        """c_S ((b t), C + 1, H, W) → {(h, w): ((b t), width, h, w)} for every UNet resolution."""
        h = self.stem(c_s)
        features = {tuple(h.shape[-2:]): h}
        for stage in self.down:
            h = stage(h)
            features[tuple(h.shape[-2:])] = h
        return features


def context_projection(width: int, channels: int, operations=nn) -> nn.Module:
    """A temporal layer's view of the context features: 1x1, bias-free, zero-initialised."""
    proj = operations.Conv2d(width, channels, kernel_size=1, bias=False)
    nn.init.zeros_(proj.weight)
    return proj
