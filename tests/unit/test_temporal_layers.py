"""Temporal layers, α blending and positional encodings (videoldm_core, torch only)."""

import math

import pytest
import torch

from videoldm_core.alpha_blender import AlphaBlender
from videoldm_core.positional import (FrameLimitError, check_frame_limit,
                                      distance_mask, sinusoidal_embedding)
from videoldm_core.slots import MotionModuleSlot, ResBlockSlot, TransformerSlot

T = 5


def randomize_(module, std=0.2):
    torch.manual_seed(3)
    for p in module.parameters():
        torch.nn.init.normal_(p, std=std)
    return module


@pytest.fixture
def inputs():
    torch.manual_seed(0)
    return dict(x=torch.randn(2 * T, 32, 6, 6), emb=torch.randn(2 * T, 64), tokens=torch.randn(2 * T, 36, 32),
                context=torch.randn(2 * T, 7, 16))


def run(slot, inputs, num_frames=T, **kw):
    if isinstance(slot, ResBlockSlot):
        return slot(inputs["x"][: 2 * num_frames], inputs["emb"][: 2 * num_frames], num_frames, **kw)
    if isinstance(slot, TransformerSlot):
        return slot(inputs["tokens"][: 2 * num_frames], 0, num_frames, context=inputs["context"][: 2 * num_frames], **kw)
    return slot(inputs["x"][: 2 * num_frames], num_frames, **kw)


SLOTS = {
    "resblock": lambda: ResBlockSlot(32, 64),
    "transformer": lambda: TransformerSlot(32, heads=4, dim_head=8, depth=1, context_dim=16),
    "transformer-relative": lambda: TransformerSlot(32, heads=4, dim_head=8, context_dim=16, positional="relative"),
    "motion_module": lambda: MotionModuleSlot(32, heads=8, max_len=8),
}


@pytest.mark.parametrize("kind", SLOTS)
def test_fresh_slot_is_exactly_the_identity(kind, inputs):
    slot = SLOTS[kind]()
    x = inputs["tokens"] if kind.startswith("transformer") else inputs["x"]
    assert torch.equal(run(slot, inputs), x)


@pytest.mark.parametrize("kind", SLOTS)
def test_slot_mixes_frames_within_a_video_only(kind, inputs):
    slot = randomize_(SLOTS[kind]())
    key = "tokens" if kind.startswith("transformer") else "x"
    base = run(slot, inputs)
    changed = dict(inputs)
    changed[key] = inputs[key].clone()
    changed[key][0] += torch.randn_like(changed[key][0])  # frame 0 of video 0 (not a constant: norms remove those)
    out = run(slot, changed)
    assert (out[1] - base[1]).abs().max() > 1e-4, "frame 1 did not see frame 0"
    assert torch.equal(out[T:], base[T:]), "the second video saw the first"


@pytest.mark.parametrize("kind", SLOTS)
def test_slot_accepts_any_frame_count_per_call(kind, inputs):
    slot = randomize_(SLOTS[kind]())
    for frames in (2, 3, T):
        assert run(slot, inputs, num_frames=frames).shape[0] == 2 * frames


def test_distance_limit_cuts_attention_beyond_it(inputs):
    slot = randomize_(MotionModuleSlot(32, heads=8, max_len=8))
    base = run(slot, inputs, attention_distance=1)
    changed = dict(inputs, x=inputs["x"].clone())
    changed["x"][0] += torch.randn_like(changed["x"][0])
    out = run(slot, changed, attention_distance=1)
    # one attention layer reaches 1 frame further per layer: two layers reach frame 2, not frame 3
    assert (out[2] - base[2]).abs().max() > 1e-5
    assert torch.allclose(out[3], base[3], atol=1e-6)


def test_distance_mask_values():
    mask = distance_mask(4, 1)
    assert mask[0, 1] == 0 and mask[0, 2] == float("-inf") and mask[3, 2] == 0
    assert distance_mask(4, None) is None and distance_mask(4, 3) is None


def test_alpha_blender_strategies_and_conventions():
    xs, xt = torch.zeros(2, 3, 1, 1), torch.ones(2, 3, 1, 1)
    assert torch.allclose(AlphaBlender("fixed", 0.25)(xs, xt), torch.full_like(xs, 0.75))
    learned = AlphaBlender("learned", 0.0)
    assert torch.allclose(learned(xs, xt), torch.full_like(xs, 0.5))
    assert learned.mix_factor.requires_grad
    images = AlphaBlender("learned_with_images", 2.0)
    indicator = torch.tensor([[1.0, 0.0, 0.0]])  # b=1, t=3: frame 0 is an image
    out = images(torch.zeros(1, 4, 3, 1, 1), torch.ones(1, 4, 3, 1, 1), indicator, alpha_layout="b t -> b 1 t 1 1")
    assert torch.all(out[:, :, 0] == 0) and torch.allclose(out[:, :, 1], torch.full_like(out[:, :, 1], 1 - 1 / (1 + math.exp(-2))))
    decoder = AlphaBlender("learned", 2.0, alpha_on="temporal")  # SVD decoder: α weights the temporal branch
    assert torch.allclose(decoder(xs, xt), torch.full_like(xs, 1 / (1 + math.exp(-2))))
    with pytest.raises(ValueError, match="merge strategy must be one of"):
        AlphaBlender("sometimes")


def test_sinusoidal_layouts():
    ldm = sinusoidal_embedding(torch.tensor([0.0, 3.0]), 8)
    assert torch.allclose(ldm[0], torch.tensor([1.0] * 4 + [0.0] * 4))  # [cos | sin]
    ad = sinusoidal_embedding(torch.tensor([3.0]), 8, interleaved=True)[0]
    assert torch.isclose(ad[0], torch.sin(torch.tensor(3.0))) and torch.isclose(ad[1], torch.cos(torch.tensor(3.0)))


def test_frame_limit_error_says_the_limit_and_how_to_go_longer():
    check_frame_limit(24, 24)
    with pytest.raises(FrameLimitError, match=r"at most 24 frames .* 32 frames were sampled.*Context Windows"):
        check_frame_limit(32, 24)


def test_motion_module_refuses_more_frames_than_its_table(inputs):
    slot = MotionModuleSlot(32, heads=8, max_len=4)
    with pytest.raises(FrameLimitError, match="at most 4 frames"):
        run(slot, inputs, num_frames=5)




def test_shared_text_is_attended_once_per_video_as_if_repeated_per_position():
    """Cross-attention with one text per video (context_repeat = its h·w positions) equals attention
    against keys and values repeated per position, and the kernel never sees the repeated copies."""
    from videoldm_core.attention import Attention, sdpa_attention

    torch.manual_seed(0)
    attn = randomize_(Attention(32, heads=4, dim_head=8, context_dim=16))
    videos, positions = 2, 9
    x, text = torch.randn(videos * positions, T, 32), torch.randn(videos, 7, 16)
    seen = []

    def kernel(q, k, v, heads, mask=None):
        seen.append((q.shape, k.shape))
        return sdpa_attention(q, k, v, heads, mask)

    with torch.no_grad():
        shared = attn(x, context=text, attention=kernel, context_repeat=positions)
        repeated = attn(x, context=text.repeat_interleave(positions, dim=0))
    torch.testing.assert_close(shared, repeated, atol=1e-6, rtol=1e-5)
    assert seen == [(torch.Size([videos, positions * T, 32]), torch.Size([videos, 7, 32]))]


@pytest.mark.parametrize("kind", ["resblock", "transformer", "transformer-relative"])
def test_each_video_of_a_batch_comes_out_as_if_run_alone(kind):
    """ComfyUI batches the cond and uncond videos, (b t) frames: each video must keep its own frame
    positions, its own first frame's text and its own timestep embedding (one per clip, as in
    training). Reading the batch as (t b), or taking the batch's first rows as the videos' text (the
    uncond video then reads the positive prompt), gives the second video another video's inputs."""
    slot = randomize_(SLOTS[kind]())
    torch.manual_seed(1)
    videos = dict(x=torch.randn(2 * T, 32, 6, 6), tokens=torch.randn(2 * T, 36, 32),
                  emb=torch.randn(2, 64).repeat_interleave(T, dim=0),          # one timestep per video
                  context=torch.randn(2, 7, 16).repeat_interleave(T, dim=0))   # cond text, uncond text
    with torch.no_grad():
        both = run(slot, videos)
        alone = [run(slot, {k: v[i * T:(i + 1) * T] for k, v in videos.items()}) for i in range(2)]
    for i in range(2):
        torch.testing.assert_close(both[i * T:(i + 1) * T], alone[i], atol=1e-5, rtol=1e-5)
    assert (alone[0] - alone[1]).abs().max() > 1e-3   # the two videos really differ


def test_relative_position_bias_depends_on_the_signed_frame_distance():
    """The relative bias is a per-head linear map of the sinusoids [cos | sin] of i − j (query frame
    i, key frame j): a frame before and a frame after at the same distance get different biases
    (sin is odd). With |i − j| the layer could not tell the past from the future."""
    from videoldm_core.positional import RelativeSinusoidalBias

    heads, dim, frames = 3, 64, 6
    bias = randomize_(RelativeSinusoidalBias(heads, dim=dim))
    with torch.no_grad():
        out = bias(frames)
    assert out.shape == (1, heads, frames, frames)
    half = dim // 2
    freqs = [10000.0 ** (-k / half) for k in range(half)]
    weight, offset = bias.proj.weight.detach().double(), bias.proj.bias.detach().double()
    for i in range(frames):
        for j in range(frames):
            d = i - j
            features = torch.tensor([math.cos(d * f) for f in freqs] + [math.sin(d * f) for f in freqs], dtype=torch.float64)
            torch.testing.assert_close(out[0, :, i, j].double(), weight @ features + offset, atol=1e-5, rtol=1e-5)
    assert (out - out.transpose(-1, -2)).abs().max() > 1e-3
