"""Overlapping windows along one axis and smooth weights to blend them (time and space alike).

A long video is decoded (or denoised) in windows so memory stays bounded; neighbouring windows
overlap and are cross-faded with weights that rise and fall as a raised cosine over the overlap.
Every window has the full length and the windows are spread evenly (equal overlaps of at least
the requested one), so temporal layers always see full windows and no window is mostly repeated
work.
"""

from __future__ import annotations

import math

import torch

from .errors import VideoLDMError


class WindowError(VideoLDMError):
    """Window settings that cannot cover a length."""


def windows(length: int, window: int, overlap: int) -> list[tuple[int, int]]:
    """[start, end) ranges of `window` items covering 0..length, neighbours sharing >= `overlap`."""
    if window < 1:
        raise WindowError(f"window must be at least 1, found {window}")
    if not 0 <= overlap < window:
        raise WindowError(f"overlap must be in 0..window-1 ({window - 1}), found {overlap}")
    if length <= window:
        return [(0, length)]
    count = math.ceil((length - overlap) / (window - overlap))  # fewest windows that keep the overlap
    # start_i = floor(i * q) with q = (length - window) / (count - 1) <= window - overlap, so every
    # step is at most window - overlap
    starts = [(i * (length - window)) // (count - 1) for i in range(count)]
    return [(s, s + window) for s in starts]


def blend_weights(start: int, end: int, length: int, ramp: int) -> torch.Tensor:
    """Weights over [start, end): a raised-cosine ramp of `ramp` items at each inner edge, 1 in
    between and at the ends of the whole axis. Strictly positive, so every item is covered."""
    n = end - start
    w = torch.ones(n)
    ramp = min(ramp, n // 2)
    if ramp > 0:
        rise = torch.tensor([0.5 - 0.5 * math.cos(math.pi * (i + 1) / (ramp + 1)) for i in range(ramp)])
        if start > 0:
            w[:ramp] = rise
        if end < length:
            w[n - ramp:] = rise.flip(0)
    return w


def overlap_of(ranges: list[tuple[int, int]]) -> int:
    """The largest overlap between neighbouring ranges (the ramp length to use)."""
    return max((a_end - b_start for (_, a_end), (b_start, _) in zip(ranges, ranges[1:])), default=0)
