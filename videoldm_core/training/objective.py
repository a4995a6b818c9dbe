"""What one training step optimises, as a list of phases.

A phase is an nn.Module whose *registered* parameters are exactly what it trains (the frozen
base model is held without registering it), and whose forward returns (loss, logged scalars).
The trainer gives each phase its own optimiser and, under torchrun, wraps it in
DistributedDataParallel, so gradient averaging is the engine's, not ours. Most modes have one
phase; the temporal decoder has two (decoder, then discriminator), as in a GAN."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import VideoLDMError


class TrainingError(VideoLDMError):
    """Bad training input: names what was expected and what was found."""


class Phase(nn.Module):
    name: str = "phase"

    def forward(self, batch: dict, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError


def frozen(module: nn.Module) -> nn.Module:
    """Freeze a base module in place and return it; raises if it cannot be frozen."""
    try:
        module.requires_grad_(False)
    except Exception as e:  # e.g. a module whose parameters are not leaf tensors
        raise TrainingError(f"the base model could not be frozen ({type(e).__name__}: {e}); "
                            "expected a module whose parameters can stop requiring grad.") from e
    still = [n for n, p in module.named_parameters() if p.requires_grad]
    if still:
        raise TrainingError(f"the base model could not be frozen: {len(still)} parameters still require grad "
                            f"(first: {still[0]}).")
    return module


def check_text_dropout(rate: float) -> float:
    if not 0.0 <= rate <= 1.0:
        raise TrainingError(f"expected text_dropout in [0, 1], found {rate}.")
    return rate


def dropped_text(rngs: list[torch.Generator], rate: float) -> torch.Tensor:
    """Classifier-free guidance's caption dropout: for each clip, True with probability `rate` that
    its text is replaced by the empty prompt's (and SDXL's pooled vector by the empty prompt's), so
    the model also learns the unconditional prediction CFG samples with. Drawn from each clip's own
    generator, so a batch split over ranks drops what one process would. (B,) bool."""
    return torch.stack([torch.rand((), generator=g) < rate for g in rngs])


class Held:
    """Holds a module without registering it, so a phase's parameters() stay the trainable ones."""

    def __init__(self, module):
        self.module = module

    def __call__(self, *args, **kwargs):
        return self.module(*args, **kwargs)
