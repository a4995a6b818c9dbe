"""Fine-tuning the temporal decoder (Video LDM §3.2): the image decoder and the encoder stay frozen,
the decoder's temporal layers learn to reconstruct video frames from the frozen encoder's latents,
against a patch-wise video discriminator (a video discriminator only; the appendix finds that
adding an image discriminator hurts reconstruction FVD).

Two phases per step, as in a GAN, each with its own optimiser:
1. `DecoderPhase` trains the temporal decoder on L1 (+ optional L2) reconstruction plus
   λ·(−E[D(x̂)]) once the discriminator is on, plus optionally μ·|Δx̂ − Δx|₁, the L1 between the
   frame-to-frame differences of reconstruction and frames (`temporal_weight`, default 0: not in
   the paper; a direct flicker term for runs too short for the discriminator to learn motion).
   The discriminator is evaluated there with detached parameters, so the decoder's backward leaves
   no gradient on it.
2. `DiscriminatorPhase` trains the discriminator with the hinge loss on the real frames and the
   reconstruction the decoder phase of the same step cached (detached).

The step: the trainer puts its step index in the batch as `batch["step"]` (an int), read by both
phases (not needed when there is no discriminator). The discriminator comes on at `disc_start`.
Before that, λ = 0 and the decoder phase does not run the discriminator, and the discriminator
phase returns its hinge loss times 0.0: still a graph over all its parameters, so
DistributedDataParallel sees every parameter used, but zero gradients. (A weight-decaying optimiser
still decays the discriminator then; give it weight_decay=0 or skip its step if that matters.)

Batch: latents (B, T, C, h, w) from the frozen encoder, frames (B, T, 3, H, W) in [-1, 1], step.
"""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.func import functional_call

from ..temporal_decoder import TemporalDecoder, spec_for_decoder
from .discriminator import PatchDiscriminator3D, generator_adversarial_loss, hinge_d_loss
from .objective import Held, Phase, TrainingError, frozen

# This pack's defaults; the paper gives neither. A fresh temporal decoder is the image decoder, so
# reconstruction starts good; the discriminator learns (and pushes back) from DISC_START.
DISC_START = 1000
ADVERSARIAL_WEIGHT = 0.1


def step_of(batch: dict) -> int:
    if "step" not in batch:
        raise TrainingError("expected batch['step'], the trainer's step index (an int) that decides whether the "
                            "discriminator is on (step >= disc_start); found no 'step' key.")
    try:
        return operator.index(batch["step"])
    except TypeError:
        raise TrainingError(f"expected batch['step'] to be an int, found {type(batch['step']).__name__}.") from None


def clip_tensors(batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(latents, frames) of a batch, checked to be (B, T, C, h, w) and (B, T, 3, H, W) of the same clips."""
    for key in ("latents", "frames"):
        if key not in batch:
            raise TrainingError(f"expected batch[{key!r}] for temporal decoder training; found keys {sorted(batch)}.")
        if batch[key].ndim != 5:
            raise TrainingError(f"expected batch[{key!r}] as (B, T, C, H, W), found shape {tuple(batch[key].shape)}.")
    latents, frames = batch["latents"], batch["frames"]
    if latents.shape[:2] != frames.shape[:2]:
        raise TrainingError(f"latents and frames must be the same clips: (B, T) {tuple(latents.shape[:2])} "
                            f"vs {tuple(frames.shape[:2])}.")
    return latents, frames


def temporal_difference_l1(reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """|Δx̂ − Δx|₁ over consecutive frames of (b, c, t, h, w) videos: flicker the frames do not have."""
    return F.l1_loss(reconstruction.diff(dim=2), target.diff(dim=2))


class DecoderPhase(Phase):
    """Trains the temporal decoder (registered); the image decoder and the discriminator are held."""

    name = "decoder"

    def __init__(self, image_decoder: nn.Module, temporal_decoder: TemporalDecoder,
                 discriminator: PatchDiscriminator3D | None = None, disc_start: int = DISC_START,
                 adversarial_weight: float = ADVERSARIAL_WEIGHT, l2_weight: float = 0.0, temporal_weight: float = 0.0):
        super().__init__()
        self.temporal_decoder = temporal_decoder
        self.image_decoder = Held(image_decoder)
        self.discriminator = Held(discriminator) if discriminator is not None else None
        self.disc_start = disc_start
        self.adversarial_weight = adversarial_weight
        self.l2_weight = l2_weight
        self.temporal_weight = temporal_weight
        self.cached_reconstruction: tuple[int, torch.Tensor] | None = None   # (step, detached (b c t h w))

    def adversarial_on(self, step: int) -> bool:
        return self.discriminator is not None and self.adversarial_weight > 0 and step >= self.disc_start

    def forward(self, batch: dict, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        latents, frames = clip_tensors(batch)
        num_frames = latents.shape[1]
        step = step_of(batch) if self.discriminator is not None else None
        z = rearrange(latents, "b t c h w -> (b t) c h w")
        reconstruction = self.temporal_decoder.decode(self.image_decoder.module, z, num_frames)
        reconstruction = rearrange(reconstruction, "(b t) c h w -> b c t h w", t=num_frames)
        target = rearrange(frames, "b t c h w -> b c t h w").to(reconstruction)
        if reconstruction.shape != target.shape:
            raise TrainingError(f"the decoder reconstructs {tuple(reconstruction.shape)} (b, c, t, h, w) from these latents "
                                f"but the frames are {tuple(target.shape)}; frames must be what the encoder saw.")
        rec = F.l1_loss(reconstruction, target)
        if self.l2_weight:
            rec = rec + self.l2_weight * F.mse_loss(reconstruction, target)
        loss, g_adv = rec, 0.0
        temporal = temporal_difference_l1(reconstruction, target) if self.temporal_weight else rec.new_zeros(())
        loss = loss + self.temporal_weight * temporal
        if self.adversarial_on(step):
            discriminator = self.discriminator.module
            detached = {name: p.detach() for name, p in discriminator.named_parameters()}
            adversarial = generator_adversarial_loss(functional_call(discriminator, detached, (reconstruction,)))
            loss = loss + self.adversarial_weight * adversarial
            g_adv = adversarial.item()
        if self.discriminator is not None:
            self.cached_reconstruction = (step, reconstruction.detach())
        return loss, {"rec": rec.item(), "g_adv": g_adv, "temporal": temporal.item()}


class DiscriminatorPhase(Phase):
    """Trains the discriminator (registered) on real frames vs the decoder phase's cached reconstruction."""

    name = "discriminator"

    def __init__(self, discriminator: PatchDiscriminator3D, decoder_phase: DecoderPhase, disc_start: int = DISC_START):
        super().__init__()
        self.discriminator = discriminator
        self.decoder_phase = Held(decoder_phase)   # held: its parameters are the decoder's, not ours
        self.disc_start = disc_start

    def forward(self, batch: dict, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        _, frames = clip_tensors(batch)
        step = step_of(batch)
        cached = self.decoder_phase.module.cached_reconstruction
        if cached is None or cached[0] != step:
            found = "none" if cached is None else f"one from step {cached[0]}"
            raise TrainingError(f"the discriminator phase needs the reconstruction of the decoder phase of the same step "
                                f"({step}); found {found}. Run the phases in order, decoder then discriminator, every step.")
        self.decoder_phase.module.cached_reconstruction = None   # one reconstruction, one discriminator update
        fake = cached[1]
        real = rearrange(frames, "b t c h w -> b c t h w").to(fake)
        if real.shape != fake.shape:
            raise TrainingError(f"the cached reconstruction is {tuple(fake.shape)} but the frames are {tuple(real.shape)}; "
                                "give both phases the same batch.")
        real_logits, fake_logits = self.discriminator(torch.cat([real, fake])).chunk(2)   # per-sample norms: one pass
        d_loss = hinge_d_loss(real_logits, fake_logits)
        weight = 1.0 if step >= self.disc_start else 0.0
        return d_loss * weight, {"d_loss": d_loss.item(), "logits_real": real_logits.mean().item(),
                                 "logits_fake": fake_logits.mean().item()}


def check_temporal_decoder_fits(image_decoder: nn.Module, temporal_decoder: TemporalDecoder):
    """Raises TrainingError naming the first decoder block whose temporal layers do not fit."""
    expected, found = spec_for_decoder(image_decoder), temporal_decoder.spec
    advice = "Build the temporal decoder with TemporalDecoder(spec_for_decoder(image_decoder)) or load one made for this VAE."
    for block, channels in expected.blocks.items():
        if block not in found.blocks:
            raise TrainingError(f"the image decoder's block {block!r} ({channels} channels) has no temporal layers in "
                                f"the temporal decoder. {advice}")
        if found.blocks[block] != channels:
            raise TrainingError(f"block {block!r} has {channels} channels in the image decoder but the temporal decoder's "
                                f"layers there are for {found.blocks[block]}. {advice}")
    for block in found.blocks:
        if block not in expected.blocks:
            raise TrainingError(f"the temporal decoder has layers for block {block!r}, which the image decoder does not "
                                f"have. {advice}")
    if found.out_channels != expected.out_channels:
        raise TrainingError(f"'conv_out' gives {expected.out_channels} channels in the image decoder but the temporal "
                            f"decoder's time_mix_conv is for {found.out_channels}. {advice}")


def decoder_phases(image_decoder: nn.Module, temporal_decoder: TemporalDecoder,
                   discriminator: PatchDiscriminator3D | None = None, *, disc_start: int = DISC_START,
                   adversarial_weight: float = ADVERSARIAL_WEIGHT, l2_weight: float = 0.0,
                   temporal_weight: float = 0.0) -> list[Phase]:
    """[DecoderPhase, DiscriminatorPhase] (or [DecoderPhase] without a discriminator: reconstruction only).
    Freezes the image decoder in place (and puts it in eval mode); the batch carries `step`."""
    if temporal_weight < 0:
        raise TrainingError(f"temporal_weight must be 0 or more, found {temporal_weight}.")
    check_temporal_decoder_fits(image_decoder, temporal_decoder)
    if discriminator is not None and discriminator.in_channels != temporal_decoder.spec.out_channels:
        raise TrainingError(f"the discriminator takes {discriminator.in_channels}-channel frames but the decoder gives "
                            f"{temporal_decoder.spec.out_channels}; build it with in_channels={temporal_decoder.spec.out_channels}.")
    frozen(image_decoder).eval()
    decoder = DecoderPhase(image_decoder, temporal_decoder, discriminator, disc_start, adversarial_weight, l2_weight,
                           temporal_weight)
    if discriminator is None:
        return [decoder]
    return [decoder, DiscriminatorPhase(discriminator, decoder, disc_start)]
