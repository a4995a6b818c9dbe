"""Pretraining the image autoencoder an LDM works in (the stage before the paper's, §3: "we use
a pre-trained image LDM"): a KL autoencoder learns to reconstruct single frames.

`AutoencoderPhase` trains the whole autoencoder (registered) in the LDM layout every SD VAE uses:
`encoder` → `quant_conv` gives the posterior's mean and log-variance, a sample z of it goes through
`post_quant_conv` → `decoder`. Loss: L1 reconstruction + kl_weight · KL(q(z|x) ‖ N(0, I)), the
per-element sums averaged over images as in LDM's autoencoder. `latent_scale` measures the scale
factor that brings the latents to unit variance (SD's 0.18215 is that number for its VAE).

Batch: frames (B, T, 3, H, W) in [-1, 1] (every frame an independent image), sample_seeds (B,).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange

from .crops import random_crop
from .objective import Phase, TrainingError

KL_WEIGHT = 1e-6   # LDM's KL-f4/f8 autoencoders use 1e-6


def posterior(autoencoder, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, logvar) of q(z | x) for images x (N, 3, H, W)."""
    moments = autoencoder.quant_conv(autoencoder.encoder(x))
    mean, logvar = moments.chunk(2, dim=1)
    return mean, logvar.clamp(-30.0, 20.0)


class AutoencoderPhase(Phase):
    name = "autoencoder"

    def __init__(self, autoencoder: torch.nn.Module, kl_weight: float = KL_WEIGHT, patch: int | None = None):
        super().__init__()
        missing = [n for n in ("encoder", "quant_conv", "post_quant_conv", "decoder") if not hasattr(autoencoder, n)]
        if missing:
            raise TrainingError(f"expected a KL autoencoder in the LDM layout (encoder, quant_conv, post_quant_conv, "
                                f"decoder); {type(autoencoder).__name__} has no {missing}.")
        if kl_weight < 0:
            raise TrainingError(f"expected kl_weight >= 0, found {kl_weight}.")
        self.autoencoder, self.kl_weight, self.patch = autoencoder, kl_weight, patch

    def forward(self, batch: dict, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
        frames = batch.get("frames")
        if frames is None or frames.ndim != 5 or frames.shape[2] != 3:
            found = None if frames is None else tuple(frames.shape)
            raise TrainingError(f"expected batch['frames'] as (B, T, 3, H, W) in [-1, 1], found {found}.")
        rngs = [torch.Generator().manual_seed(int(s)) for s in batch["sample_seeds"]]
        if self.patch:
            frames, = random_crop([frames], rngs, self.patch)
        x = rearrange(frames, "b t c h w -> (b t) c h w")
        mean, logvar = posterior(self.autoencoder, x)
        t = frames.shape[1]
        eps = torch.cat([torch.randn((t, *mean.shape[1:]), generator=g) for g in rngs]).to(mean)
        z = mean + (0.5 * logvar).exp() * eps
        reconstruction = self.autoencoder.decoder(self.autoencoder.post_quant_conv(z))
        rec = F.l1_loss(reconstruction.float(), x.float())
        kl = 0.5 * (mean.float() ** 2 + logvar.float().exp() - 1.0 - logvar.float()).flatten(1).sum(1).mean()
        loss = rec + self.kl_weight * kl
        return loss, {"loss": loss.item(), "rec": rec.item(), "kl": kl.item()}

@torch.no_grad()
def latent_scale(autoencoder, images, chunk: int = 16) -> float:
    """1 / std of the posterior means over `images`, (N, 3, H, W) or an iterable of such blocks (one
    frame folder's clip after another: no video of all frames is ever whole, on the host or the
    device): the latent format's scale factor. The std is taken from running float64 sums."""
    blocks = images.split(chunk) if torch.is_tensor(images) else images
    seen, count, total, squares = 0, 0, 0.0, 0.0
    for block in blocks:
        if block.ndim != 4:
            raise TrainingError(f"expected images (N, 3, H, W) to measure the latent scale, found {tuple(block.shape)}.")
        for piece in block.split(chunk):
            means = posterior(autoencoder, piece)[0].detach().cpu().double()   # float64 on the host (MPS has none)
            seen, count = seen + piece.shape[0], count + means.numel()
            total, squares = total + means.sum().item(), squares + (means ** 2).sum().item()
    if seen < 2:
        raise TrainingError(f"expected at least 2 images (N, 3, H, W) to measure the latent scale, found {seen}.")
    variance = (squares - total * total / count) / (count - 1)   # unbiased, as torch.std
    if not variance > 0:
        raise TrainingError(f"the autoencoder's latents do not vary over {seen} images (variance {variance:g}): it has "
                            "collapsed; no latent scale can be measured. Train it with a lower learning rate.")
    return float(1.0 / math.sqrt(variance))
