"""Patch-wise denoising plans (Video LDM §3.1.1 "Temporal fine-tuning of SR models": the
upsampler is trained on patches and applied convolutionally).

A `TilePlan` cuts a (T, C, H, W) video latent into overlapping spatial tiles (the same tiling for
every frame) and overlapping temporal chunks. Each region has a weight map; the weights of all
regions sum to exactly one at every element, so blending per-region predictions with them is a
partition of unity: one region covering everything gives the untiled prediction unchanged.
Predictions are blended at every denoising step, never sampled per tile and stitched.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product

import torch

from .windows import blend_weights, overlap_of, windows


class TilingError(ValueError):
    """Tile or chunk settings that cannot cut the latent."""


def check_split(name: str, size: int, overlap: int):
    if size < 1:
        raise TilingError(f"{name} must be at least 1, found {size}.")
    if not 0 <= overlap < size:
        raise TilingError(f"{name} overlap must be smaller than the {name} ({size}) and not negative, found {overlap}.")


@dataclass(frozen=True)
class Region:
    frames: tuple[int, int]    # [start, end) along T
    rows: tuple[int, int]      # [start, end) along H
    cols: tuple[int, int]      # [start, end) along W

    def slices(self):
        return slice(*self.frames), slice(None), slice(*self.rows), slice(*self.cols)


@dataclass(frozen=True)
class TilePlan:
    shape: tuple[int, int, int]      # T, H, W
    regions: tuple[Region, ...]
    weights: tuple[torch.Tensor, ...]   # per region (t, 1, h, w), summing to one over all regions

    def blend(self, predict, groups: int = 1) -> torch.Tensor:
        """Σ_r weight_r · predict(r) placed at r. `predict(region)` returns (groups · t, C, h, w): the
        region's frames for each of `groups` videos stacked in the batch (e.g. cond and uncond)."""
        out = None
        for region, weight in zip(self.regions, self.weights):
            part = predict(region)
            part = part.reshape(groups, region.frames[1] - region.frames[0], *part.shape[1:])
            if out is None:
                out = part.new_zeros(groups, self.shape[0], part.shape[2], *self.shape[1:])
            out[(slice(None), *region.slices())] += part * weight.to(part)
        return out.reshape(groups * self.shape[0], *out.shape[2:])

    def rows(self, region: Region, groups: int) -> torch.Tensor:
        """Batch rows of a region's frames when `groups` videos of T frames are stacked."""
        t = self.shape[0]
        return torch.cat([torch.arange(g * t + region.frames[0], g * t + region.frames[1]) for g in range(groups)])


def plan_tiles(frames: int, height: int, width: int, tile: int, tile_overlap: int, chunk: int, chunk_overlap: int
               ) -> TilePlan:
    """Tiles of `tile` x `tile` latent pixels (fewer at the edges of a smaller latent) and chunks of
    `chunk` frames, neighbours overlapping by at least the given amounts. Raised-cosine ramps over
    the overlaps, normalised to a partition of unity."""
    check_split("tile", tile, tile_overlap)
    check_split("chunk", chunk, chunk_overlap)
    axes = [windows(frames, chunk, chunk_overlap), windows(height, tile, tile_overlap), windows(width, tile, tile_overlap)]
    ramps = [overlap_of(a) for a in axes]
    lengths = (frames, height, width)
    per_axis = [[blend_weights(s, e, n, r) for s, e in axis] for axis, n, r in zip(axes, lengths, ramps)]
    total = torch.zeros(frames, height, width)
    raw = []
    for (it, t), (ih, h), (iw, w) in product(*[list(enumerate(a)) for a in axes]):
        weight = per_axis[0][it][:, None, None] * per_axis[1][ih][None, :, None] * per_axis[2][iw][None, None, :]
        total[slice(*t), slice(*h), slice(*w)] += weight
        raw.append((Region(t, h, w), weight))
    regions, weights = [], []
    for region, weight in raw:
        regions.append(region)
        norm = weight / total[slice(*region.frames), slice(*region.rows), slice(*region.cols)]
        weights.append(norm[:, None])
    return TilePlan((frames, height, width), tuple(regions), tuple(weights))
