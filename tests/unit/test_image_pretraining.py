"""Image pretraining (the paper's first stage) on a small pure-torch denoiser: the UNet itself is
what trains, every frame is its own sample, captions are marked for the empty prompt, the x4 upscaler's
low-res frames are cropped with the latents and noise-augmented."""

import pytest
import torch
from torch import nn

from videoldm_core.noise_schedule import SD_SCHEDULE, BetaSchedule
from videoldm_core.training.batches import StepBatches
from videoldm_core.training.image_objective import ImagePhase
from videoldm_core.training.objective import TrainingError
from videoldm_core.training.schedule import NoiseSchedule
from videoldm_core.training.trainer import Trainer, TrainConfig


class TinyDenoiser(nn.Module):
    def __init__(self, channels=4, extra=0):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(channels + extra + 1, 32, 3, padding=1), nn.SiLU(), nn.Conv2d(32, channels, 3, padding=1))
        self.calls = []

    def __call__(self, x_t, t, num_videos, conditioning):
        self.calls.append({"t": t.clone(), "num_videos": num_videos, **{k: v.clone() for k, v in conditioning.items()}})
        x = x_t if "concat" not in conditioning else torch.cat([x_t, conditioning["concat"]], 1)
        t_map = (t.float() / 1000)[:, None, None, None].expand(-1, 1, *x.shape[-2:])
        return self.net(torch.cat([x, t_map], 1))


def blobs(count=12, size=8):
    """Latent 'images': smooth blobs at seeded places, so there is something to learn."""
    out = []
    for i in range(count):
        g = torch.Generator().manual_seed(i)
        cy, cx = torch.randint(2, size - 2, (2,), generator=g).tolist()
        yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
        blob = torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 4.0)
        out.append({"latents": torch.stack([blob, -blob, blob * 0.5, torch.zeros_like(blob)])[None]})  # (T=1, C, h, w)
    return out


def phase(net, **kwargs):
    return ImagePhase(net.net, net, NoiseSchedule.from_sigmas(SD_SCHEDULE.sigmas()), **kwargs)


def test_the_unet_itself_is_what_trains_and_its_loss_falls():
    net = TinyDenoiser()
    image_phase = phase(net, text_dropout=0.0)
    assert {id(p) for p in image_phase.parameters()} == {id(p) for p in net.net.parameters()}
    trainer = Trainer([image_phase], TrainConfig(steps=80, lr=3e-3, seed=1), StepBatches(blobs(), 6, seed=1))
    trainer.run()
    losses = [r["unet/loss"] for r in trainer.history]
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    print(f"loss {first:.3f} -> {last:.3f}")
    assert last < 0.7 * first


def test_every_frame_is_its_own_sample():
    net = TinyDenoiser()
    latents = torch.randn(2, 3, 4, 8, 8)
    loss, _ = phase(net, text_dropout=0.0)({"latents": latents, "sample_seeds": torch.tensor([5, 6])}, torch.Generator())
    [call] = net.calls
    assert call["num_videos"] == 6 and call["t"].shape == (6,)
    assert len(set(call["t"].tolist())) > 3   # timesteps drawn per frame, not per clip
    assert loss.ndim == 0 and loss.item() > 0


def test_captions_are_marked_for_the_empty_prompt_per_clip():
    """A clip's text, or the run's prompt when the batch has none, is marked for the empty prompt the
    denoiser holds (its swap: tests/host/test_training.py), for every frame of the clip alike."""
    batch = {"latents": torch.randn(4, 3, 4, 8, 8), "text": torch.ones(4, 5, 3), "sample_seeds": torch.arange(4)}
    for dropout in (1.0, 0.0):
        net = TinyDenoiser()
        _, logs = phase(net, text_dropout=dropout)(batch, torch.Generator())
        assert logs.get("text_dropped", 0.0) == dropout
        assert ("text_dropped" in net.calls[0]) == (dropout > 0)
    assert net.calls[0]["text"].shape == (12, 5, 3)   # the clip's text for each of its frames
    net = TinyDenoiser()
    without_text = {k: v for k, v in batch.items() if k != "text"}
    _, logs = phase(net, text_dropout=0.5)({**without_text, "sample_seeds": torch.arange(40, 44)}, torch.Generator())
    marked = net.calls[0]["text_dropped"]
    assert marked.shape == (12,) and marked.dtype == torch.bool and "text" not in net.calls[0]
    per_clip = marked.reshape(4, 3)
    assert (per_clip == per_clip[:, :1]).all() and 0 < per_clip[:, 0].sum() < 4   # the seeds drop some clips, not all
    assert per_clip[:, 0].float().mean().item() == logs["text_dropped"]


def test_upscaler_frames_are_cropped_with_the_latents_and_augmented():
    net = TinyDenoiser(extra=3)
    latents = torch.arange(16.0)[None, :].expand(16, 16).reshape(1, 1, 1, 16, 16).expand(2, 1, 4, 16, 16).clone()
    low_res = latents[:, :, :3].clone()
    augment = NoiseSchedule.from_sigmas(BetaSchedule("linear", 0.0001, 0.02).sigmas())   # the x4 model's
    p = ImagePhase(net.net, net, NoiseSchedule.from_sigmas(SD_SCHEDULE.sigmas()), text_dropout=0.0, augment_schedule=augment, patch=8)
    _, logs = p({"latents": latents, "low_res": low_res, "sample_seeds": torch.tensor([1, 2])}, torch.Generator())
    [call] = net.calls
    assert call["concat"].shape == (2, 3, 8, 8) and call["y"].shape == (2,)
    assert 0 <= logs["noise_level"] <= 350
    with pytest.raises(TrainingError, match="low-res frames"):
        p({"latents": latents, "sample_seeds": torch.tensor([1, 2])}, torch.Generator())


def test_bad_settings_are_refused():
    net = TinyDenoiser()
    with pytest.raises(TrainingError, match=r"text_dropout in \[0, 1\], found 2"):
        phase(net, text_dropout=2)
    with pytest.raises(TrainingError, match=r"latents \(B, T, C, h, w\), found shape \(2, 4, 8, 8\)"):
        phase(net, text_dropout=0.0)({"latents": torch.randn(2, 4, 8, 8), "sample_seeds": torch.arange(2)}, torch.Generator())
