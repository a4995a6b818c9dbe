"""One random window per clip, the same in every frame: patch training (Video LDM §3.3: the
upsampler is trained on patches; the autoencoder and the image model may be too), and the per-step
crop and flip of pre-encoded clips (`LatentAugmentation`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .objective import TrainingError


def draw_window(size: tuple[int, int], window: tuple[int, int], g: torch.Generator) -> tuple[int, int]:
    """(top, left) of a `window` (height, width) inside `size`, uniformly, drawn from `g` (top, then left)."""
    return tuple(int(torch.randint(0, n - k + 1, (1,), generator=g)) for n, k in zip(size, window))


def random_crop(videos: list[torch.Tensor], rngs: list[torch.Generator], patch: int, what: str = "frames"
                ) -> list[torch.Tensor]:
    """Each of `videos` (B, ..., h, w), all of one height and width, cut to the same `patch` x `patch`
    window per clip; clip i's window is drawn from its own generator `rngs[i]` (top, then left)."""
    h, w = videos[0].shape[-2:]
    if patch > min(h, w):
        raise TrainingError(f"patch size {patch} is larger than the {what} ({h}x{w}).")
    windows = []
    for g in rngs:
        top, left = draw_window((h, w), (patch, patch), g)
        windows.append((slice(top, top + patch), slice(left, left + patch)))
    return [torch.stack([clip[..., rows, cols] for clip, (rows, cols) in zip(video, windows)]) for video in videos]


# what of a cached clip lies on its latent grid and moves with the crop and the flip
ON_LATENT_GRID = ("latents", "low_res")


@dataclass(frozen=True)
class LatentAugmentation:
    """Augmentation of pre-encoded clips in latent space: the cache holds latents of frames larger
    than the training size, and each step every clip gets its own `height` x `width` window (in
    latent pixels) and, with `flip`, a horizontal flip, the same for all its frames and for all that
    lies on its latent grid (ON_LATENT_GRID: the x4 upscaler's low-res frames too). Captions are
    per clip and pass unchanged; context frames are cut from the latents afterwards, so they match.
    Flipping SD VAE latents approximates flipping the pixels (the encoder is not mirror-symmetric)."""

    height: int
    width: int
    flip: bool = False

    def __call__(self, item: dict, g: torch.Generator) -> dict:
        h, w = item["latents"].shape[-2:]
        if self.height > h or self.width > w:
            raise TrainingError(f"the latent cache holds {h}x{w} latents, smaller than the {self.height}x{self.width} "
                                "training window; rebuild it with data.cache_height/cache_width at least height/width.")
        top, left = draw_window((h, w), (self.height, self.width), g)
        flip = self.flip and bool(torch.rand((), generator=g) < 0.5)
        out = dict(item)
        for key in ON_LATENT_GRID:
            x = item.get(key)
            if x is None:
                continue
            if x.shape[-2:] != (h, w):
                raise TrainingError(f"a cached clip's '{key}' is {tuple(x.shape[-2:])}, off its latents' {h}x{w} grid; "
                                    "expected both at the latent size.")
            x = x[..., top:top + self.height, left:left + self.width]
            out[key] = (x.flip(-1) if flip else x).contiguous()
        return out


def latent_augmentation(cached: tuple[int, int], trained: tuple[int, int], latent: tuple[int, int],
                        flip: bool) -> LatentAugmentation | None:
    """The augmentation of clips cached at `cached` (height, width) pixels as `latent` (h, w) latents
    and trained at `trained` pixels (data.cache_height/cache_width, data.height/width): None when
    there is none (the same size, no flip), so such a run is exactly a run without augmentation."""
    if tuple(cached) == tuple(trained) and not flip:
        return None
    window = []
    for axis, size, train, z in zip(("height", "width"), cached, trained, latent):
        if size < train:
            raise TrainingError(f"data.cache_{axis} ({size} px) is smaller than data.{axis} ({train} px); expected "
                                "the cached frames at least as large as the training window.")
        factor, rest = divmod(size, z)
        if rest or (size - train) % factor:
            raise TrainingError(f"data.cache_{axis} ({size} px, {z} latent pixels) must exceed data.{axis} ({train} px) "
                                f"by whole latent pixels, found {size - train} px; use sizes that are multiples of "
                                f"the autoencoder's {max(factor, 1)} px per latent pixel.")
        window.append(z - (size - train) // factor)
    return LatentAugmentation(*window, flip=flip)
