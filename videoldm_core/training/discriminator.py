"""The temporal decoder's video discriminator (Video LDM §3.2: the decoder is fine-tuned "with a
(patch-wise) temporal discriminator built from 3D convolutions"; the appendix ablation keeps the
video discriminator alone, with no image discriminator).

sgm has only a 2D `NLayerDiscriminator` (pix2pix's PatchGAN), so this is that design inflated to
3D: `layers` convolutions with 4×4 kernels and stride 2 in space, two more with stride 1, the last
one giving one logit per patch. Every convolution spans `kernel_t` frames (odd, zero "same"
padding), with stride `stride_t` in time on the strided layers.

Normalisation is a LayerNorm over the channels at each (t, h, w) position, not GroupNorm:
GroupNorm pools its statistics over the whole clip, which would make every logit depend on every
pixel, and BatchNorm would make real and fake logits depend on the batch they share. The first
layer has no normalisation, as in pix2pix.

Sizes, for frames of t × h × w and L = `layers`, with t_s = `stride_t`, k = `kernel_t`:
- logits: (b, 1, t', h', w') with h' = ⌊h / 2^L⌋ − 2, w' likewise, t' = t after ⌈· / t_s⌉ L times;
- receptive field of one logit: 9·2^L − 2 pixels in h and w (L=3: 70, pix2pix's 70×70 patches),
  and 1 + (k − 1)·(1 + t_s + … + t_s^(L−1) + 2·t_s^L) frames (t_s = 1: 1 + (L + 2)(k − 1)).
`logits_shape` and `receptive_field` compute both from the layers themselves.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


class ChannelNorm(nn.Module):
    """LayerNorm over channels at each position of (b, c, t, h, w): normalises without pooling over space or time."""

    def __init__(self, channels: int, operations=nn):
        super().__init__()
        self.norm = operations.LayerNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rearrange(self.norm(rearrange(x, "b c t h w -> b t h w c")), "b t h w c -> b c t h w")


class PatchDiscriminator3D(nn.Module):
    def __init__(self, in_channels: int = 3, width: int = 64, layers: int = 3, kernel_t: int = 3,
                 stride_t: int = 1, operations=nn):
        super().__init__()
        if layers < 1:
            raise ValueError(f"layers must be at least 1, found {layers}")
        if kernel_t < 1 or kernel_t % 2 == 0:
            raise ValueError(f"kernel_t must be odd (frames keep their count under 'same' padding), found {kernel_t}")
        if stride_t < 1:
            raise ValueError(f"stride_t must be at least 1, found {stride_t}")
        self.in_channels = in_channels

        def conv(c_in, c_out, stride):
            return operations.Conv3d(c_in, c_out, kernel_size=(kernel_t, 4, 4), stride=stride,
                                     padding=(kernel_t // 2, 1, 1))

        widths = [width * min(2 ** n, 8) for n in range(layers + 1)]   # pix2pix: doubling, capped at 8×
        body = [conv(in_channels, widths[0], (stride_t, 2, 2)), nn.LeakyReLU(0.2)]
        for n in range(1, layers):
            body += [conv(widths[n - 1], widths[n], (stride_t, 2, 2)), ChannelNorm(widths[n], operations), nn.LeakyReLU(0.2)]
        body += [conv(widths[layers - 1], widths[layers], 1), ChannelNorm(widths[layers], operations), nn.LeakyReLU(0.2),
                 conv(widths[layers], 1, 1)]
        self.body = nn.Sequential(*body)

    def convolutions(self) -> list[nn.Conv3d]:
        return [m for m in self.body if isinstance(m, nn.Conv3d)]

    def logits_shape(self, t: int, h: int, w: int) -> tuple[int, int, int]:
        """(t', h', w') of the patch-logit map for frames of t × h × w (≤ 0: the frames are too small)."""
        size = [t, h, w]
        for c in self.convolutions():
            size = [(n + 2 * p - k) // s + 1 for n, k, s, p in zip(size, c.kernel_size, c.stride, c.padding)]
        return tuple(size)

    @property
    def receptive_field(self) -> tuple[int, int, int]:
        """(frames, pixels, pixels) that one patch logit sees."""
        field = [1, 1, 1]
        for c in reversed(self.convolutions()):
            field = [r * s + k - s for r, k, s in zip(field, c.kernel_size, c.stride)]
        return tuple(field)

    def forward(self, frames: torch.Tensor, num_frames: int | None = None) -> torch.Tensor:
        """frames: (b, c, t, h, w), or ((b t), c, h, w) with `num_frames` = t. Returns (b, 1, t', h', w') logits."""
        if frames.ndim == 4:
            if num_frames is None:
                raise ValueError("frames given as ((b t), c, h, w) need num_frames; or pass them as (b, c, t, h, w).")
            frames = rearrange(frames, "(b t) c h w -> b c t h w", t=num_frames)
        elif frames.ndim != 5:
            raise ValueError(f"expected frames as (b, c, t, h, w) or ((b t), c, h, w), found shape {tuple(frames.shape)}")
        if frames.shape[1] != self.in_channels:
            raise ValueError(f"expected {self.in_channels} channels, found {frames.shape[1]} (shape {tuple(frames.shape)})")
        if min(self.logits_shape(*frames.shape[2:])) < 1:
            raise ValueError(f"frames of {tuple(frames.shape[2:])} (t, h, w) are too small for a {len(self.convolutions()) - 2}-layer "
                             f"discriminator: it needs at least 3·2^layers pixels a side; use fewer layers or larger crops.")
        return self.body(frames)


def hinge_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Discriminator hinge loss, ½(E[relu(1 − D(x))] + E[relu(1 + D(x̂))]), halved as in taming/sgm."""
    return 0.5 * (F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean())


def generator_adversarial_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """The decoder's adversarial loss against a hinge discriminator: −E[D(x̂)]."""
    return -fake_logits.mean()
