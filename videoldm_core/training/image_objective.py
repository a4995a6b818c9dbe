"""Image pretraining, the paper's first stage (§3): an image LDM learns to denoise single frames;
its spatial weights are then frozen and every temporal part is trained on top of them.

`ImagePhase` trains the UNet itself (registered) on frames that are independent samples: every
frame gets its own timestep and noise. For the SD x4 upscaler the low-res frames are concatenated,
noise-augmented to a random level given as the class label, on random patches, as in the temporal
upscaler mode. A share of the captions is dropped to the empty prompt (`dropped_text`; the denoiser
swaps the text), so the model also learns the unconditional prediction classifier-free guidance needs.

Batch: latents (B, T, C, h, w) (T frames of a clip, or T = 1), sample_seeds (B,), optional text
(B, L, D) and, for the upscaler, low_res (B, T, 3, h, w) at the latent size.
"""

from __future__ import annotations

import torch
from einops import rearrange, repeat

from .diffusion_objective import Denoiser, augmented_low_res, same_crop
from .objective import Held, Phase, TrainingError, check_text_dropout, dropped_text
from .schedule import NoiseSchedule


class ImagePhase(Phase):
    name = "unet"

    def __init__(self, unet: torch.nn.Module, denoiser: Denoiser, schedule: NoiseSchedule,
                 text_dropout: float = 0.1, augment_schedule: NoiseSchedule | None = None,
                 max_noise_level: int = 350, patch: int | None = None):
        super().__init__()
        self.unet = unet                           # registered: trained
        self.denoiser, self.schedule = Held(denoiser), schedule
        self.text_dropout = check_text_dropout(text_dropout)
        self.augment_schedule, self.max_noise_level, self.patch = augment_schedule, max_noise_level, patch

    def forward(self, batch: dict, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
        z0 = batch["latents"]
        if z0.ndim != 5:
            raise TrainingError(f"expected latents (B, T, C, h, w), found shape {tuple(z0.shape)}.")
        b, t = z0.shape[:2]
        rngs = [torch.Generator().manual_seed(int(s)) for s in batch["sample_seeds"]]
        conditioning, logs = {}, {}
        if self.augment_schedule is not None:
            z0, low_res = same_crop(z0, batch.get("low_res"), rngs, self.patch)
            conditioning, level = augmented_low_res(low_res, rngs, self.augment_schedule, self.max_noise_level)
            logs["noise_level"] = level.float().mean().item()
        noise = torch.stack([torch.randn(z0.shape[1:], generator=g) for g in rngs]).to(z0)
        steps = torch.stack([self.schedule.sample_timesteps(t, g) for g in rngs])       # one per frame
        x0, eps, steps = (rearrange(v, "b t ... -> (b t) ...") for v in (z0, noise, steps))
        x_t = self.schedule.add_noise(x0, eps, steps)
        if batch.get("text") is not None:
            conditioning["text"] = repeat(batch["text"], "b l d -> (b t) l d", t=t)
        if self.text_dropout > 0:   # a clip's text, or the run's prompt the denoiser holds
            dropped = dropped_text(rngs, self.text_dropout)
            conditioning["text_dropped"] = repeat(dropped, "b -> (b t)", t=t)
            logs["text_dropped"] = dropped.float().mean().item()
        # each frame is its own sample: one "video" per row, so temporal layers (if any) see single frames
        prediction = self.denoiser(x_t, steps.to(z0.device), b * t, conditioning)
        target = self.schedule.target(x0, eps, steps)
        loss = ((prediction.float() - target.float()) ** 2).mean()
        return loss, {"loss": loss.item(), **logs}
