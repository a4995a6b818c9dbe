"""Autoencoder pretraining on a small pure-torch KL autoencoder in the LDM layout: the whole
autoencoder trains, the KL term is the Gaussian one, the latent scale is 1 / std."""

import pytest
import torch
from torch import nn

from videoldm_core.training.autoencoder_objective import AutoencoderPhase, latent_scale, posterior
from videoldm_core.training.batches import StepBatches
from videoldm_core.training.objective import TrainingError
from videoldm_core.training.trainer import Trainer, TrainConfig


class TinyKL(nn.Module):
    """f2 autoencoder with 2 latent channels, in the LDM attribute layout."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.encoder = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.SiLU(), nn.Conv2d(16, 4, 3, padding=1))
        self.quant_conv = nn.Conv2d(4, 4, 1)
        self.post_quant_conv = nn.Conv2d(2, 2, 1)
        self.decoder = nn.Sequential(nn.Upsample(scale_factor=2), nn.Conv2d(2, 16, 3, padding=1), nn.SiLU(),
                                     nn.Conv2d(16, 3, 3, padding=1))


def squares(count=8, size=16):
    out = []
    for i in range(count):
        g = torch.Generator().manual_seed(i)
        frame = torch.full((3, size, size), -0.5)
        y, x = torch.randint(0, size - 6, (2,), generator=g).tolist()
        frame[:, y:y + 6, x:x + 6] = torch.rand(3, 1, 1, generator=g) * 2 - 1
        out.append({"frames": frame[None]})   # (T=1, 3, H, W)
    return out


def test_the_whole_autoencoder_trains_and_reconstruction_improves():
    ae = TinyKL()
    phase = AutoencoderPhase(ae)
    assert {id(p) for p in phase.parameters()} == {id(p) for p in ae.parameters()}
    trainer = Trainer([phase], TrainConfig(steps=120, lr=3e-3, seed=0), StepBatches(squares(), 4, seed=0))
    trainer.run()
    rec = [r["autoencoder/rec"] for r in trainer.history]
    print(f"rec {sum(rec[:10]) / 10:.3f} -> {sum(rec[-10:]) / 10:.3f}")
    assert sum(rec[-10:]) < 0.5 * sum(rec[:10])


def test_kl_is_zero_for_the_standard_normal_posterior_and_grows_away_from_it():
    ae = TinyKL()
    with torch.no_grad():
        ae.quant_conv.weight.zero_()
        ae.quant_conv.bias.zero_()
    batch = {"frames": torch.rand(2, 1, 3, 16, 16) * 2 - 1, "sample_seeds": torch.tensor([0, 1])}
    _, logs = AutoencoderPhase(ae)(batch, torch.Generator())
    assert logs["kl"] == pytest.approx(0.0, abs=1e-6)
    with torch.no_grad():
        ae.quant_conv.bias[:2] = 1.0   # mean 1 everywhere: KL = 0.5 per element, 2 x 8 x 8 elements
    _, logs = AutoencoderPhase(ae)(batch, torch.Generator())
    assert logs["kl"] == pytest.approx(0.5 * 2 * 8 * 8, rel=1e-5)


def test_latent_scale_brings_latents_to_unit_variance():
    ae = TinyKL()
    images = torch.rand(12, 3, 16, 16) * 2 - 1
    scale = latent_scale(ae, images, chunk=5)
    mean, _ = posterior(ae, images)
    assert (mean * scale).std().item() == pytest.approx(1.0, rel=1e-4)
    clip_by_clip = latent_scale(ae, iter([images[:4], images[4:9], images[9:]]), chunk=3)   # never one tensor
    assert clip_by_clip == pytest.approx(scale, rel=1e-9)


def test_bad_input_is_refused():
    with pytest.raises(TrainingError, match=r"LDM layout.*has no \['encoder', 'quant_conv', 'post_quant_conv', 'decoder'\]"):
        AutoencoderPhase(nn.Linear(2, 2))
    with pytest.raises(TrainingError, match="kl_weight >= 0, found -1"):
        AutoencoderPhase(TinyKL(), kl_weight=-1)
    with pytest.raises(TrainingError, match=r"batch\['frames'\] as \(B, T, 3, H, W\).*found \(2, 3, 16, 16\)"):
        AutoencoderPhase(TinyKL())({"frames": torch.zeros(2, 3, 16, 16), "sample_seeds": torch.arange(2)}, torch.Generator())
    with pytest.raises(TrainingError, match="patch size 32 is larger than the frames"):
        AutoencoderPhase(TinyKL(), patch=32)({"frames": torch.zeros(2, 1, 3, 16, 16), "sample_seeds": torch.arange(2)},
                                             torch.Generator())
    with pytest.raises(TrainingError, match="at least 2 images"):
        latent_scale(TinyKL(), torch.zeros(1, 3, 16, 16))
    collapsed = TinyKL()
    with torch.no_grad():
        collapsed.quant_conv.weight.zero_(), collapsed.quant_conv.bias.zero_()   # the same latent for every image
    with pytest.raises(TrainingError, match="latents do not vary over 4 images .* it has collapsed"):
        latent_scale(collapsed, torch.rand(4, 3, 16, 16))
