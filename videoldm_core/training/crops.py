"""Patch training (Video LDM §3.3: the upsampler is trained on patches; the autoencoder and the
image model may be too): one random square window per clip, the same in every frame."""

from __future__ import annotations

import torch

from .objective import TrainingError


def random_crop(videos: list[torch.Tensor], rngs: list[torch.Generator], patch: int, what: str = "frames"
                ) -> list[torch.Tensor]:
    """Each of `videos` (B, ..., h, w), all of one height and width, cut to the same `patch` x `patch`
    window per clip; clip i's window is drawn from its own generator `rngs[i]` (top, then left)."""
    h, w = videos[0].shape[-2:]
    if patch > min(h, w):
        raise TrainingError(f"patch size {patch} is larger than the {what} ({h}x{w}).")
    windows = []
    for g in rngs:
        top, left = (int(torch.randint(0, n - patch + 1, (1,), generator=g)) for n in (h, w))
        windows.append((slice(top, top + patch), slice(left, left + patch)))
    return [torch.stack([clip[..., rows, cols] for clip, (rows, cols) in zip(video, windows)]) for video in videos]
