"""Context frames for prediction: masks, c_S, the context encoder, context guidance, rollout plans."""

import pytest
import torch

from videoldm_core.temporal_adapter import AdapterFormatError, AdapterSpec, TemporalAdapter, read_adapter_spec, save_adapter
from videoldm_core.context import (ContextEncoder, ContextError, VideoContext, context_input, context_mask,
                                   context_positions, place_frames)
from videoldm_core.guidance import with_context_guidance
from videoldm_core.placement import SpatialLayer, videoldm_slots
from videoldm_core.rollout import plan_rollout, rollout_length
from videoldm_core.slots import ResBlockSlot, TransformerSlot

LAYOUT = [
    SpatialLayer("input_blocks.1.0", "resblock", 32, emb_channels=128),
    SpatialLayer("input_blocks.1.1", "transformer", 32, heads=4, dim_head=8, depth=1, context_dim=16),
]


def randomized(module, seed=0, std=0.2):
    torch.manual_seed(seed)
    for p in module.parameters():
        torch.nn.init.normal_(p, std=std)
    return module


@pytest.mark.parametrize("spec, expected", [("start", [0, 1]), ("end", [6, 7]), ("0, -1", [0, 7]), ("3,5", [3, 5])])
def test_positions(spec, expected):
    assert context_positions(spec, 2, 8) == expected


@pytest.mark.parametrize("spec, given, frames, message", [
    ("start", 8, 8, "S < T"),            # S >= T
    ("start", 9, 8, "S < T"),
    ("0, 9", 2, 8, "0..7"),
    ("1, 1", 2, 8, "distinct"),
    ("0", 2, 8, "2 positions"),
    ("first", 1, 8, "'start', 'end'"),
])
def test_bad_positions_name_what_was_expected(spec, given, frames, message):
    with pytest.raises(ContextError, match=message):
        context_positions(spec, given, frames)


def test_context_input_is_masked_latents_and_mask():
    z = torch.randn(5, 4, 6, 7)
    m = context_mask(5, [0, 3])
    c = context_input(z, m)
    assert c.shape == (5, 5, 6, 7)
    assert torch.equal(c[[0, 3], :4], z[[0, 3]]) and c[[1, 2, 4]].abs().sum() == 0
    assert torch.equal(c[:, 4], m[:, None, None].expand(5, 6, 7))


def test_place_frames_and_fit_check():
    given = torch.randn(2, 4, 6, 6)
    latents = place_frames(given, [1, 3], 5)
    assert torch.equal(latents[[1, 3]], given) and latents[[0, 2, 4]].abs().sum() == 0
    context = VideoContext(latents, (1, 3))
    context.check_fits((5, 4, 6, 6))
    with pytest.raises(ContextError, match="channels 4 vs 8"):
        context.check_fits((5, 8, 6, 6))
    with pytest.raises(ContextError, match=r"height 6 vs 12, width 6 vs 12"):
        context.check_fits((5, 4, 12, 12))


@pytest.mark.parametrize("size, expected", [((8, 8), [(8, 8), (4, 4), (2, 2), (1, 1)]),
                                            ((9, 7), [(9, 7), (5, 4), (3, 2), (2, 1)])])
def test_encoder_makes_a_map_per_unet_resolution(size, expected):
    features = ContextEncoder(5, width=8, levels=4)(torch.randn(3, 5, *size))
    assert list(features) == expected and all(f.shape[:2] == (3, 8) for f in features.values())


def test_encoder_maps_no_context_to_exactly_zero_at_any_weights():
    encoder = randomized(ContextEncoder(5, width=8, levels=3))
    features = encoder(torch.zeros(4, 5, 8, 8))
    assert all(torch.count_nonzero(f) == 0 for f in features.values())
    assert any(f.abs().sum() > 0 for f in encoder(torch.randn(4, 5, 8, 8)).values())


def test_slots_without_context_equal_slots_with_zero_context_bit_for_bit():
    torch.manual_seed(1)
    res = randomized(ResBlockSlot(32, 128, context_channels=8, merge_strategy="fixed", alpha=0.5))
    x, emb = torch.randn(8, 32, 4, 4), torch.randn(8, 128)
    zero = torch.zeros(8, 8, 4, 4)
    assert torch.equal(res(x, emb, 4), res(x, emb, 4, context_features=zero))
    assert (res(x, emb, 4) - res(x, emb, 4, context_features=torch.randn(8, 8, 4, 4))).abs().max() > 1e-3

    attn = randomized(TransformerSlot(32, 4, 8, context_dim=16, context_channels=8, merge_strategy="fixed", alpha=0.5))
    tokens, text = torch.randn(8, 16, 32), torch.randn(8, 3, 16)
    assert torch.equal(attn(tokens, 0, 4, context=text), attn(tokens, 0, 4, context=text, context_features=zero))
    assert (attn(tokens, 0, 4, context=text) - attn(tokens, 0, 4, context=text,
                                                     context_features=torch.randn(8, 8, 4, 4))).abs().max() > 1e-3


def test_fresh_context_projection_is_zero_so_a_new_encoder_changes_nothing():
    slot = ResBlockSlot(32, 128, context_channels=8)
    x, emb = torch.randn(8, 32, 4, 4), torch.randn(8, 128)
    assert torch.equal(slot(x, emb, 4), slot(x, emb, 4, context_features=torch.randn(8, 8, 4, 4)))


def prediction_spec(width=8):
    return AdapterSpec("SD1.x", "videoldm", videoldm_slots(LAYOUT, context_channels=width),
                       context_encoder=dict(in_channels=5, width=width, levels=2), context_frames=[0, 1, 2])


def test_spec_records_the_context_encoder_and_round_trips(tmp_path):
    spec = prediction_spec()
    adapter = randomized(TemporalAdapter(spec))
    assert any(k.startswith("context_encoder.stem.") for k in adapter.state_dict())
    assert "input_blocks.1.0.context_proj.weight" in adapter.state_dict()
    save_adapter(tmp_path / "p.safetensors", adapter)
    read = read_adapter_spec(tmp_path / "p.safetensors")
    assert read == spec and read.has_context_encoder and read.context_frames == [0, 1, 2]
    assert not AdapterSpec("SD1.x", "videoldm", videoldm_slots(LAYOUT)).has_context_encoder


def test_spec_refuses_an_encoder_the_slots_do_not_read():
    with pytest.raises(AdapterFormatError, match="context_channels=8, found \\[0\\]"):
        AdapterSpec("SD1.x", "videoldm", videoldm_slots(LAYOUT), context_encoder=dict(in_channels=5, width=8, levels=2))
    with pytest.raises(AdapterFormatError, match="expected the fields"):
        AdapterSpec("SD1.x", "videoldm", videoldm_slots(LAYOUT, context_channels=8), context_encoder=dict(width=8))


def test_context_guidance_maths():
    cond, dropped = torch.randn(3, 4), torch.randn(3, 4)
    assert with_context_guidance(cond, 1.0) is cond   # s = 1: the context-dropped branch is not needed
    # the paper's f(z) + s (f(z; c) - f(z)), in the host's CFG operation order
    assert torch.equal(with_context_guidance(cond, 2.5, dropped), dropped + (cond - dropped) * 2.5)


def test_rollout_plan_follows_the_paper_recipe():
    plan = plan_rollout(existing=1, segment_length=8, context_frames=2, segments=10)
    assert [s.context_frames for s in plan] == [1] + [2] * 9
    assert [s.new_frames for s in plan] == [7] + [6] * 9
    assert rollout_length(1, 8, 2, 10) == 1 + 7 + 9 * 6


@pytest.mark.parametrize("args, message", [
    ((1, 8, 8, 3), "smaller than the segment length"),   # overlap == length
    ((1, 8, 9, 3), "smaller than the segment length"),   # overlap > length
    ((1, 8, 2, 0), "at least 1 segment, found 0"),
    ((0, 8, 2, 3), "at least 1 existing frame"),
    ((1, 8, 0, 3), "at least 1 context frame"),
])
def test_bad_rollouts_are_refused_before_sampling(args, message):
    with pytest.raises(ContextError, match=message):
        plan_rollout(*args)
