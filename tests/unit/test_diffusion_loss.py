"""The temporal layers' denoising loss (videoldm_core.training.diffusion_objective), with a stand-in
denoiser: which frames the loss is taken over."""

import pytest
import torch

from videoldm_core.placement import SpatialLayer, videoldm_slots
from videoldm_core.temporal_adapter import AdapterSpec, TemporalAdapter
from videoldm_core.training.diffusion_objective import DiffusionPhase
from videoldm_core.training.schedule import NoiseSchedule

pytestmark = pytest.mark.usefixtures("one_thread")

B, T = 4, 6


def prediction_adapter():
    layout = [SpatialLayer("input_blocks.1.0", "resblock", 32, emb_channels=128)]
    spec = AdapterSpec("SD1.x", "videoldm", videoldm_slots(layout, context_channels=8),
                       context_encoder=dict(in_channels=5, width=8, levels=2), context_frames=[1, 2])
    return TemporalAdapter(spec)


def denoiser_with_errors(latents, schedule, on_given, on_predicted, seen):
    """Predicts ε exactly, recovered from x_t = √ᾱ_t · x_0 + √(1 − ᾱ_t) · ε, then adds `on_given` on
    the frames the conditioning gives (mask channel of c_S = 1) and `on_predicted` (a number, or one
    per clip) on the others."""
    x0 = latents.reshape(-1, *latents.shape[2:]).double()

    def denoise(x_t, t, num_videos, conditioning):
        a = schedule.alphas_cumprod[t.long()].view(-1, 1, 1, 1)
        eps = (x_t.double() - a.sqrt() * x0) / (1 - a).sqrt()
        given = conditioning["c_s"][:, -1:].double()    # m_S, broadcast over the channels
        seen.append(given[:, 0, 0, 0].reshape(num_videos, -1))
        per_row = torch.as_tensor(on_predicted, dtype=torch.float64).reshape(-1, 1, 1, 1)
        if per_row.shape[0] > 1:                        # one error per clip
            per_row = per_row.repeat_interleave(x_t.shape[0] // num_videos, dim=0)
        return (eps + on_given * given + per_row * (1 - given)).float()

    return denoise


def prediction_loss(on_given, on_predicted):
    """(loss, logs, each clip's m_S (B, T)) of one prediction-mode step on B clips of T frames that
    draw 1 or 2 context frames."""
    torch.manual_seed(0)
    latents = torch.randn(B, T, 4, 4, 4)
    schedule = NoiseSchedule(torch.linspace(0.99, 0.05, 50, dtype=torch.float64))
    seen = []
    denoiser = denoiser_with_errors(latents, schedule, on_given, on_predicted, seen)
    phase = DiffusionPhase(prediction_adapter(), denoiser, schedule, "prediction", context_frames=(1, 2))
    batch = {"latents": latents, "sample_seeds": torch.arange(B) + 10}
    with torch.no_grad():
        loss, logs = phase(batch, torch.Generator().manual_seed(0))
    (masks,) = seen
    return loss, logs, masks


@pytest.mark.parametrize("on_given, on_predicted, expected", [(3.0, 0.0, 0.0), (0.0, 1.0, 1.0), (5.0, 1.0, 1.0)])
def test_prediction_loss_is_over_the_frames_to_predict_only(on_given, on_predicted, expected):
    """Prediction mode (§3.1.1): the S context frames are given through c_S, so the loss is each clip's
    mean over its T − S frames to predict. A denoiser exact there and wrong on the given frames has
    loss 0; one off by 1 on every frame to predict has loss 1 whatever S each clip drew. A mean over
    all T frames counts the given frames (or dilutes the error by S / T)."""
    loss, logs, masks = prediction_loss(on_given, on_predicted)
    given = masks.sum(dim=1)
    assert set(given.tolist()) == {1.0, 2.0}, "the clips should draw both context frame counts"
    assert torch.all(masks[:, :1] == 1)                  # the context frames are the first frames
    assert logs["context_frames"] == pytest.approx(given.mean().item())
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_every_clip_counts_the_same_whatever_its_context_frames():
    """The loss is the mean over clips of each clip's mean over its frames to predict: a clip given 2
    frames weighs as much as one given 1 (and ranks holding parts of a batch average to the whole).
    Pooling all predicted frames of the batch would weigh clips by how many frames they predict."""
    errors = torch.tensor([1.0, 2.0, 3.0, 4.0]).sqrt()    # clip k off by √k on its frames to predict
    loss, _, masks = prediction_loss(0.0, errors)
    assert len(set(masks.sum(dim=1).tolist())) > 1
    assert loss.item() == pytest.approx(2.5, abs=1e-5)   # (1 + 2 + 3 + 4) / 4
