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

from .errors import VideoLDMError
from .windows import blend_weights, overlap_of, windows


class TilingError(VideoLDMError):
    """Tile or chunk settings that cannot cut the latent."""


MIN_TILE = 8   # latent pixels: the smallest spatial tile an out-of-memory fallback tries (the SD grid)


def used_tile(tile: int, height: int, width: int) -> int:
    """The spatial tile `tile` really is on frames of height x width (0, or a tile past the frame:
    the frame's longer side)."""
    return min(tile, max(height, width)) if tile > 0 else max(height, width)


def smaller_tile(tile: int, height: int, width: int) -> int | None:
    """The spatial tile to try after running out of memory with `tile` (0: whole frames): half of
    what was really used (never more than the frame), on the 8-pixel grid; None below MIN_TILE."""
    half = used_tile(tile, height, width) // 2 // MIN_TILE * MIN_TILE
    return half if half >= MIN_TILE else None


def smaller_overlap(overlap: int, tile: int, smaller: int, height: int, width: int) -> int:
    """The tile overlap for tiles shrunk from `tile` to `smaller`: in proportion to the tile really
    used, at least one pixel where there was an overlap (tiles that share none are seams), below
    the new tile."""
    if overlap <= 0:
        return 0
    return min(max(1, overlap * smaller // used_tile(tile, height, width)), smaller - 1)


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

    def slices(self, scale: int = 1, channels_last: bool = False):
        """Index of the region in a (T, C, H·scale, W·scale) tensor, or (T, H·scale, W·scale, C)."""
        rows, cols = slice(self.rows[0] * scale, self.rows[1] * scale), slice(self.cols[0] * scale, self.cols[1] * scale)
        if channels_last:
            return slice(*self.frames), rows, cols, slice(None)
        return slice(*self.frames), slice(None), rows, cols


@dataclass(frozen=True)
class TilePlan:
    shape: tuple[int, int, int]      # T, H, W
    regions: tuple[Region, ...]
    # the weights are separable: per axis, each window's 1D ramp divided by the sum of all windows'
    # ramps there; a region's weight map is the outer product of its three windows' (built when used,
    # so a plan holds O(T + H + W) numbers, not a latent-sized map per region)
    axis_weights: tuple[tuple[torch.Tensor, ...], ...]
    windows_of: tuple[tuple[int, int, int], ...]   # per region: its window index along T, H, W

    def weight(self, index: int, scale: int = 1, channels_last: bool = False) -> torch.Tensor:
        """Region `index`'s weight map, (t, 1, h, w) or (t, h, w, 1); each latent pixel's weight covers
        its scale x scale output pixels (still a partition of unity)."""
        (wt, wh, ww), (it, ih, iw) = self.axis_weights, self.windows_of[index]
        wh, ww = wh[ih].repeat_interleave(scale), ww[iw].repeat_interleave(scale)
        weight = wt[it][:, None, None] * wh[None, :, None] * ww[None, None, :]
        return weight[..., None] if channels_last else weight[:, None]

    @property
    def weights(self) -> tuple[torch.Tensor, ...]:
        return tuple(self.weight(i) for i in range(len(self.regions)))

    def blend(self, predict, groups: int = 1, scale: int = 1, channels_last: bool = False, device=None) -> torch.Tensor:
        """Σ_r weight_r · predict(r) placed at r: the blend of Video Upscale (every denoising step) and
        Temporal VAE Decode (decoded frames), accumulated in one whole tensor. `predict(region)`
        returns (groups · t, C, h, w) (or (groups · t, h, w, C) with `channels_last`): the region's
        frames for each of `groups` videos stacked in the batch (e.g. cond and uncond), `scale` times
        the region's height and width (a decoder's upsampling). The sum is kept on `device` (default:
        the predictions'). `blend_in_order` gives the same frames as they are finished."""
        out = None
        t = self.shape[0]
        for index, region in enumerate(self.regions):
            part = predict(region)
            part = part.reshape(groups, region.frames[1] - region.frames[0], *part.shape[1:])
            if out is None:
                out = part.new_zeros(groups, t, *self._frame_shape(part, scale, channels_last), device=device)
            weight = self.weight(index, scale, channels_last).to(out)
            out[(slice(None), *region.slices(scale, channels_last))] += part.to(out) * weight
        return out.reshape(groups * t, *out.shape[2:])

    def blend_in_order(self, predict, groups: int = 1, scale: int = 1, channels_last: bool = False, device=None):
        """`blend` frame by frame as the frames are finished: yields (start, block), block (groups, n,
        ...) the blended frames [start, start + n), in order and covering every frame once. Only the
        frames of the current chunk are held, with the block just yielded and the prediction being
        added (about four chunks in all: what a streamed decode holds while it writes a file).
        Regions are taken in plan order and each element's weighted predictions are summed onto zero
        in that order, as `blend` sums them, so the frames equal `blend`'s bit for bit."""
        pending, first = None, 0     # frames [first, first + len(pending)) still taking contributions
        for index, region in enumerate(self.regions):
            t0, t1 = region.frames
            part = predict(region)
            part = part.reshape(groups, t1 - t0, *part.shape[1:])
            if pending is None:
                pending = part.new_zeros(groups, 0, *self._frame_shape(part, scale, channels_last), device=device)
            if t0 > first:                        # a new chunk: the frames before it are finished
                yield first, pending[:, :t0 - first]
                pending, first = pending[:, t0 - first:], t0
            if t1 > first + pending.shape[1]:     # frames no region has touched yet start at zero
                grown = pending.new_zeros(groups, t1 - first, *pending.shape[2:])
                grown[:, :pending.shape[1]] = pending
                pending = grown
            weight = self.weight(index, scale, channels_last).to(pending)
            _, *space = region.slices(scale, channels_last)
            pending[(slice(None), slice(t0 - first, t1 - first), *space)] += part.to(pending) * weight
        yield first, pending

    def _frame_shape(self, part: torch.Tensor, scale: int, channels_last: bool) -> tuple[int, ...]:
        h, w = self.shape[1] * scale, self.shape[2] * scale
        return (h, w, part.shape[-1]) if channels_last else (part.shape[2], h, w)

    def rows(self, region: Region, groups: int) -> torch.Tensor:
        """Batch rows of a region's frames when `groups` videos of T frames are stacked."""
        t = self.shape[0]
        return torch.cat([torch.arange(g * t + region.frames[0], g * t + region.frames[1]) for g in range(groups)])


def normalised(ranges: list[tuple[int, int]], length: int) -> tuple[torch.Tensor, ...]:
    """Each window's raised-cosine ramp divided by the sum of all windows' ramps over the axis."""
    ramp = overlap_of(ranges)
    raw = [blend_weights(s, e, length, ramp) for s, e in ranges]
    total = torch.zeros(length)
    for (s, e), w in zip(ranges, raw):
        total[s:e] += w
    return tuple(w / total[s:e] for (s, e), w in zip(ranges, raw))


def plan_tiles(frames: int, height: int, width: int, tile: int, tile_overlap: int, chunk: int, chunk_overlap: int
               ) -> TilePlan:
    """Tiles of `tile` x `tile` latent pixels (fewer at the edges of a smaller latent) and chunks of
    `chunk` frames, neighbours overlapping by at least the given amounts. Raised-cosine ramps over
    the overlaps; the product of the three axes' normalised weights is a partition of unity (the sum
    over all regions of a product of per-axis sums, each one)."""
    check_split("tile", tile, tile_overlap)
    check_split("chunk", chunk, chunk_overlap)
    axes = [windows(frames, chunk, chunk_overlap), windows(height, tile, tile_overlap), windows(width, tile, tile_overlap)]
    indexed = list(product(*[list(enumerate(a)) for a in axes]))
    return TilePlan((frames, height, width), tuple(Region(t, h, w) for (_, t), (_, h), (_, w) in indexed),
                    tuple(normalised(a, n) for a, n in zip(axes, (frames, height, width))),
                    tuple((it, ih, iw) for (it, _), (ih, _), (iw, _) in indexed))
