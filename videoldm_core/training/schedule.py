"""The base model's discrete noise schedule and parameterisation (paper §3: "The noise schedule
is the image model's own"; y is ε or v, both used in the paper).

Variance preserving: x_t = √ᾱ_t · x_0 + √(1 − ᾱ_t) · ε, with ᾱ the cumulative product of
(1 − β). The ε target is ε; the v target is √ᾱ_t · ε − √(1 − ᾱ_t) · x_0.
"""

from __future__ import annotations

import torch

from .objective import TrainingError

PREDICTIONS = ("eps", "v")


class NoiseSchedule:
    def __init__(self, alphas_cumprod: torch.Tensor, prediction: str = "eps"):
        if prediction not in PREDICTIONS:
            raise TrainingError(f"expected a prediction type in {PREDICTIONS}, found {prediction!r}.")
        alphas_cumprod = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
        if alphas_cumprod.ndim != 1 or not ((alphas_cumprod > 0) & (alphas_cumprod < 1)).all():
            raise TrainingError(f"expected ᾱ as a 1-D tensor with values in (0, 1), found shape {tuple(alphas_cumprod.shape)}.")
        self.alphas_cumprod, self.prediction = alphas_cumprod, prediction

    @classmethod
    def from_sigmas(cls, sigmas: torch.Tensor, prediction: str = "eps") -> "NoiseSchedule":
        """From k-diffusion sigmas σ_t = √((1 − ᾱ_t) / ᾱ_t), as ComfyUI's ModelSamplingDiscrete holds them."""
        return cls(1.0 / (1.0 + torch.as_tensor(sigmas, dtype=torch.float64) ** 2), prediction)

    @property
    def num_timesteps(self) -> int:
        return self.alphas_cumprod.shape[0]

    def _coefficients(self, t: torch.Tensor, like: torch.Tensor):
        a = self.alphas_cumprod.to(t.device)[t.long()]
        shape = (-1,) + (1,) * (like.ndim - 1)
        return a.sqrt().to(like).view(shape), (1.0 - a).sqrt().to(like).view(shape)

    def sample_timesteps(self, count: int, generator: torch.Generator, high: int | None = None) -> torch.Tensor:
        return torch.randint(0, high or self.num_timesteps, (count,), generator=generator)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t for one timestep per row of x0."""
        sqrt_a, sqrt_1ma = self._coefficients(t, x0)
        return sqrt_a * x0 + sqrt_1ma * noise

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.prediction == "eps":
            return noise
        sqrt_a, sqrt_1ma = self._coefficients(t, x0)
        return sqrt_a * noise - sqrt_1ma * x0
