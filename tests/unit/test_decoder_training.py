"""Temporal decoder fine-tuning (Video LDM §3.2): the 3D patch discriminator, its losses, and the
decoder/discriminator phases on a tiny decoder in the LDM layout (torch only, no host)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from videoldm_core.temporal_decoder import TemporalDecoder, spec_for_decoder
from videoldm_core.training.decoder_objective import decoder_phases, temporal_difference_l1
from videoldm_core.training.discriminator import PatchDiscriminator3D, generator_adversarial_loss, hinge_d_loss
from videoldm_core.training.objective import TrainingError


pytestmark = pytest.mark.usefixtures("one_thread")


class ResnetBlock(nn.Module):
    """The LDM decoder's ResnetBlock, called as block(h, None) (no timestep embedding)."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.out_channels = c_out
        self.norm1, self.conv1 = nn.GroupNorm(32, c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2, self.conv2 = nn.GroupNorm(32, c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x, temb):
        h = self.conv2(F.silu(self.norm2(self.conv1(F.silu(self.norm1(x))))))
        return self.nin_shortcut(x) + h


class TinyDecoder(nn.Module):
    """An image decoder in the LDM `Decoder` layout (conv_in, mid, up[i].block/attn/upsample,
    norm_out, conv_out), without attention; latents h×w give frames 2^(levels−1)·h × 2^(levels−1)·w."""

    def __init__(self, ch: int = 32, ch_mult=(1, 2), num_res_blocks: int = 1, z_channels: int = 4, out_ch: int = 3):
        super().__init__()
        self.num_resolutions, self.num_res_blocks = len(ch_mult), num_res_blocks
        c = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(z_channels, c, 3, padding=1)
        self.mid = nn.Module()
        self.mid.block_1, self.mid.attn_1, self.mid.block_2 = ResnetBlock(c, c), nn.Identity(), ResnetBlock(c, c)
        self.up = nn.ModuleList()
        for i_level in reversed(range(self.num_resolutions)):
            level = nn.Module()
            level.block, level.attn = nn.ModuleList(), nn.ModuleList()
            for _ in range(num_res_blocks + 1):
                level.block.append(ResnetBlock(c, ch * ch_mult[i_level]))
                c = ch * ch_mult[i_level]
            if i_level != 0:
                level.upsample = nn.Sequential(nn.Upsample(scale_factor=2.0), nn.Conv2d(c, c, 3, padding=1))
            self.up.insert(0, level)
        self.norm_out, self.conv_out = nn.GroupNorm(32, c), nn.Conv2d(c, out_ch, 3, padding=1)


def randomised(temporal_decoder: TemporalDecoder, seed: int) -> TemporalDecoder:
    """Temporal layers that do something: every weight perturbed, so frames mix over time."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in temporal_decoder.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.2)
    return temporal_decoder


def clip(image_decoder, teacher, batch=2, frames=4, size=8, seed=0):
    """Latents that drift over time, and the frames a *different* temporal decoder makes of them."""
    generator = torch.Generator().manual_seed(seed)
    a, b = (torch.randn(batch, 1, 4, size, size, generator=generator) for _ in range(2))
    t = torch.linspace(0, 1, frames)[None, :, None, None, None]
    latents = (1 - t) * a + t * b
    with torch.no_grad():
        pixels = teacher.decode(image_decoder, latents.flatten(0, 1), frames)
    return dict(latents=latents, frames=pixels.unflatten(0, (batch, frames)))


# --- discriminator ---------------------------------------------------------------------------


@pytest.mark.parametrize("layers, stride_t, t, h, w, expected", [
    (3, 1, 8, 64, 96, (8, 6, 10)),      # ⌊64/8⌋−2, ⌊96/8⌋−2; frames keep their count
    (2, 1, 5, 32, 32, (5, 6, 6)),
    (1, 2, 7, 16, 20, (4, 6, 8)),       # ⌈7/2⌉ frames
    (2, 2, 8, 24, 24, (2, 4, 4)),
])
def test_discriminator_gives_patch_logits_of_the_documented_shape(layers, stride_t, t, h, w, expected):
    discriminator = PatchDiscriminator3D(width=8, layers=layers, stride_t=stride_t)
    logits = discriminator(torch.randn(2, 3, t, h, w))
    assert logits.shape == (2, 1, *expected)
    assert discriminator.logits_shape(t, h, w) == expected


@pytest.mark.parametrize("layers, kernel_t, stride_t, expected", [
    (3, 3, 1, (11, 70, 70)),    # 1 + (L+2)(k−1) frames, 9·2^L − 2 pixels: pix2pix's 70×70
    (2, 3, 1, (9, 34, 34)),
    (1, 5, 2, (1 + 4 * (1 + 2 * 2), 16, 16)),
])
def test_receptive_field_follows_the_documented_formula(layers, kernel_t, stride_t, expected):
    assert PatchDiscriminator3D(width=8, layers=layers, kernel_t=kernel_t, stride_t=stride_t).receptive_field == expected


def test_a_patch_logit_sees_only_its_receptive_field():
    torch.manual_seed(0)
    discriminator = PatchDiscriminator3D(width=8, layers=2).eval()
    rf_t, rf_h, rf_w = discriminator.receptive_field           # (9, 34, 34): logit (0, 0, 0) sees less than that
    x = torch.randn(1, 3, 12, 48, 48)
    with torch.no_grad():
        before = discriminator(x)[0, 0, 0, 0, 0]
        far = x.clone()
        far[:, :, rf_t:, :, :] += 5.0                         # frames beyond the field, everywhere in space
        far[:, :, :, rf_h:, :] += 5.0                         # rows beyond it, in every frame
        far[:, :, :, :, rf_w:] += 5.0
        near = x.clone()
        near[:, :, 0, 0, 0] += 5.0
        assert (discriminator(far)[0, 0, 0, 0, 0] - before).abs() < 1e-5
        assert (discriminator(near)[0, 0, 0, 0, 0] - before).abs() > 1e-3
        assert (discriminator(far)[0, 0, -1, -1, -1] - discriminator(x)[0, 0, -1, -1, -1]).abs() > 1e-3


def test_discriminator_takes_frames_flat_or_as_video():
    torch.manual_seed(0)
    discriminator = PatchDiscriminator3D(width=8, layers=2)
    video = torch.randn(2, 3, 4, 32, 32)
    flat = video.movedim(2, 1).flatten(0, 1)                    # (b c t h w) -> ((b t) c h w)
    assert torch.allclose(discriminator(flat, num_frames=4), discriminator(video), atol=1e-6)
    with pytest.raises(ValueError, match="need num_frames"):
        discriminator(flat)
    with pytest.raises(ValueError, match="too small.*at least 3·2\\^layers"):
        discriminator(torch.randn(1, 3, 4, 8, 8))


def test_hinge_losses_on_known_logits():
    real, fake = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([-2.0, 0.0, 1.0])
    # relu(1 − real) = [0, 0.5, 2] → 5/6; relu(1 + fake) = [0, 1, 2] → 1; halved sum
    assert hinge_d_loss(real, fake).item() == pytest.approx(0.5 * (5 / 6 + 1))
    assert hinge_d_loss(torch.full((4,), 3.0), torch.full((4,), -3.0)).item() == 0.0   # confident and right: no loss
    assert generator_adversarial_loss(fake).item() == pytest.approx(1 / 3)


# --- phases ----------------------------------------------------------------------------------


@pytest.fixture
def setup():
    torch.manual_seed(0)
    image_decoder = TinyDecoder()
    spec = spec_for_decoder(image_decoder)
    teacher = randomised(TemporalDecoder(spec), seed=1)
    student = TemporalDecoder(spec)                             # fresh: the image decoder, frame by frame
    return image_decoder, student, clip(image_decoder, teacher)


def test_training_lowers_reconstruction_and_leaves_the_image_decoder_untouched(setup):
    image_decoder, student, batch = setup
    image_before = {k: v.clone() for k, v in image_decoder.state_dict().items()}
    discriminator = PatchDiscriminator3D(width=8, layers=1)      # 16×16 frames: 6×6 patch logits
    phases = decoder_phases(image_decoder, student, discriminator, disc_start=3, adversarial_weight=0.05)
    assert [p.name for p in phases] == ["decoder", "discriminator"]
    assert {id(p) for p in phases[0].parameters()} == {id(p) for p in student.parameters()}
    assert {id(p) for p in phases[1].parameters()} == {id(p) for p in discriminator.parameters()}
    optimisers = [torch.optim.AdamW(p.parameters(), lr=1e-2) for p in phases]
    generator = torch.Generator().manual_seed(0)
    logs = []
    for step in range(20):
        logs.append({})
        for phase, optimiser in zip(phases, optimisers):
            optimiser.zero_grad()
            loss, logged = phase(dict(batch, step=step), generator)
            loss.backward()
            optimiser.step()
            logs[-1].update(logged)

    assert set(logs[0]) == {"rec", "g_adv", "temporal", "d_loss", "logits_real", "logits_fake"}
    assert logs[0]["rec"] > 0.05                               # the teacher's temporal layers are there to learn
    assert logs[-1]["rec"] < 0.5 * logs[0]["rec"]
    assert logs[0]["g_adv"] == 0.0 and logs[-1]["g_adv"] != 0.0   # the adversarial term comes on at disc_start
    for key, value in image_decoder.state_dict().items():
        assert torch.equal(value, image_before[key]), key
    assert all(p.grad is None and not p.requires_grad for p in image_decoder.parameters())


def test_the_temporal_term_sees_flicker_only():
    """|Δx̂ − Δx|₁: zero for a constant offset over all frames (an error, but no flicker), the
    size of the flicker for an offset that alternates frame by frame."""
    frames = torch.randn(2, 3, 5, 8, 8)
    assert temporal_difference_l1(frames + 0.3, frames) < 1e-6
    flicker = torch.tensor([0.0, 0.1, 0.0, 0.1, 0.0]).view(1, 1, 5, 1, 1)
    assert torch.isclose(temporal_difference_l1(frames + flicker, frames), torch.tensor(0.1))


def test_the_temporal_term_lowers_flicker_without_a_discriminator(setup):
    image_decoder, student, batch = setup
    phases = decoder_phases(image_decoder, student, temporal_weight=1.0)
    assert [p.name for p in phases] == ["decoder"]
    optimiser = torch.optim.AdamW(phases[0].parameters(), lr=1e-2)
    logs = []
    for step in range(20):
        optimiser.zero_grad()
        loss, logged = phases[0](batch, torch.Generator())
        loss.backward()
        optimiser.step()
        logs.append(logged)
    assert logs[0]["temporal"] > 0 and logs[-1]["temporal"] < 0.5 * logs[0]["temporal"]
    with pytest.raises(TrainingError, match="temporal_weight must be 0 or more, found -1"):
        decoder_phases(image_decoder, student, temporal_weight=-1)


def test_decoder_phase_leaves_no_gradient_on_the_discriminator(setup):
    image_decoder, student, batch = setup
    discriminator = PatchDiscriminator3D(width=8, layers=2)
    decoder_phase, _ = decoder_phases(image_decoder, student, discriminator, disc_start=0, adversarial_weight=1.0)
    loss, logged = decoder_phase(dict(batch, step=0), torch.Generator())
    loss.backward()
    assert logged["g_adv"] != 0.0
    assert all(p.grad is None for p in discriminator.parameters())
    assert all(p.grad is not None for p in student.parameters())


def test_discriminator_is_trained_only_from_disc_start(setup):
    image_decoder, student, batch = setup
    discriminator = PatchDiscriminator3D(width=8, layers=2)
    decoder_phase, discriminator_phase = decoder_phases(image_decoder, student, discriminator, disc_start=1)
    for step, weighted in ((0, False), (1, True)):
        decoder_phase(dict(batch, step=step), torch.Generator())
        loss, logged = discriminator_phase(dict(batch, step=step), torch.Generator())
        discriminator.zero_grad()
        loss.backward()                                         # a graph over every parameter, either way
        assert logged["d_loss"] > 0
        assert loss.item() == (pytest.approx(logged["d_loss"]) if weighted else 0.0)
        assert all(p.grad is not None for p in discriminator.parameters())
        assert any(p.grad.abs().sum() > 0 for p in discriminator.parameters()) == weighted


def test_discriminator_phase_needs_the_decoder_phase_of_the_same_step(setup):
    image_decoder, student, batch = setup
    decoder_phase, discriminator_phase = decoder_phases(image_decoder, student, PatchDiscriminator3D(width=8, layers=2))
    with pytest.raises(TrainingError, match=r"reconstruction of the decoder phase of the same step \(0\); found none"):
        discriminator_phase(dict(batch, step=0), torch.Generator())
    decoder_phase(dict(batch, step=0), torch.Generator())
    with pytest.raises(TrainingError, match="same step \\(1\\); found one from step 0"):
        discriminator_phase(dict(batch, step=1), torch.Generator())
    decoder_phase(dict(batch, step=1), torch.Generator())
    discriminator_phase(dict(batch, step=1), torch.Generator())
    with pytest.raises(TrainingError, match="found none"):      # each reconstruction is used once
        discriminator_phase(dict(batch, step=1), torch.Generator())


def test_phases_need_the_step_in_the_batch(setup):
    image_decoder, student, batch = setup
    decoder_phase, _ = decoder_phases(image_decoder, student, PatchDiscriminator3D(width=8, layers=2))
    with pytest.raises(TrainingError, match=r"expected batch\['step'\]"):
        decoder_phase(batch, torch.Generator())
    only_decoder, = decoder_phases(image_decoder, student)   # reconstruction only: no step needed
    loss, logged = only_decoder(batch, torch.Generator())
    assert logged["g_adv"] == 0.0 and loss.item() == pytest.approx(logged["rec"])


@pytest.mark.parametrize("temporal_for, message", [
    (dict(ch=64, ch_mult=(1, 2)), r"block 'mid\.block_1' has 64 channels in the image decoder but the temporal decoder's layers there are for 128"),
    (dict(num_res_blocks=0), r"image decoder's block 'up\.0\.block\.1' \(32 channels\) has no temporal layers"),
    (dict(num_res_blocks=2), r"temporal decoder has layers for block 'up\.0\.block\.2', which the image decoder does not have"),
])
def test_temporal_decoder_for_another_decoder_is_refused_naming_the_block(temporal_for, message):
    torch.manual_seed(0)
    image_decoder = TinyDecoder()
    temporal_decoder = TemporalDecoder(spec_for_decoder(TinyDecoder(**temporal_for)))
    with pytest.raises(TrainingError, match=message):
        decoder_phases(image_decoder, temporal_decoder)
    assert all(p.requires_grad for p in image_decoder.parameters())   # refused before anything was frozen
