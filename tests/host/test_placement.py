"""Where temporal slots go in ComfyUI's real SD UNets (full size, on the meta device), and the
Video LDM layout's parameter count against the paper and sgm's own VideoUNet."""

import json
from pathlib import Path

import pytest
import torch

from devtools import unet_configs
from videoldm_core.temporal_adapter import AdapterSpec, TemporalAdapter, resolve_slots
from videoldm_core.placement import animatediff_slots, videoldm_slots

KEYS = Path(__file__).resolve().parents[1] / "data" / "keys"


@pytest.fixture(scope="module")
def layout_of(pack_module):
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    spatial_layout = pack_module("host.unet_layout").spatial_layout
    return lambda config: spatial_layout(UNetModel(**config, device="meta", operations=comfy.ops.disable_weight_init))


def meta_adapter(slots, family="SD1.x", placement="videoldm"):
    with torch.device("meta"):
        return TemporalAdapter(AdapterSpec(family, placement, slots))


def n_params(module):
    return sum(p.numel() for p in module.parameters())


def test_videoldm_layout_has_the_papers_parameter_counts(layout_of):
    # Video LDM appendix: "649 (SD 1.4) / 656 (SD 2.0/2.1) million parameters in the temporal layers"
    assert n_params(meta_adapter(videoldm_slots(layout_of(unet_configs.SD15)))) == 649_687_078
    assert n_params(meta_adapter(videoldm_slots(layout_of(unet_configs.SD21)))) == 656_076_838


def test_videoldm_layout_equals_sgm_videounet_key_for_key(layout_of):
    reference = {}
    for line in (KEYS / "sgm_videounet_sd15_keys.txt").read_text().splitlines():
        key, shape = line.split("\t")
        if any(t in key for t in (".time_stack.", ".time_mixer.", ".time_pos_embed.")):
            reference[key.removeprefix("model.diffusion_model.")] = tuple(json.loads(shape))
    ours = meta_adapter(videoldm_slots(layout_of(unet_configs.SD15), text_context=False)).state_dict()
    assert {k: tuple(v.shape) for k, v in ours.items()} == reference


def slot_table(slots):
    return {path: (c["kind"], c["channels"], c.get("heads"), c.get("dim_head"), c.get("depth"), c.get("context_dim"))
            for path, c in slots.items()}


def expected_sd(context, heads_of):
    c = [320, 640, 1280, 1280]
    out = {}
    for i, level in enumerate([0, 0, 1, 1, 2, 2, 3, 3]):
        block = [1, 2, 4, 5, 7, 8, 10, 11][i]
        out[f"input_blocks.{block}.0"] = ("resblock", c[level], None, None, None, None)
        if level < 3:
            out[f"input_blocks.{block}.1"] = ("transformer", c[level], *heads_of(c[level]), 1, context)
    out["middle_block.0"] = out["middle_block.2"] = ("resblock", 1280, None, None, None, None)
    out["middle_block.1"] = ("transformer", 1280, *heads_of(1280), 1, context)
    for block in range(12):
        level = 3 - block // 3
        out[f"output_blocks.{block}.0"] = ("resblock", c[level], None, None, None, None)
        if level < 3:
            out[f"output_blocks.{block}.1"] = ("transformer", c[level], *heads_of(c[level]), 1, context)
    return out


def test_videoldm_slots_sd1_slot_by_slot(layout_of):
    assert slot_table(videoldm_slots(layout_of(unet_configs.SD15))) == expected_sd(768, lambda c: (8, c // 8))


def test_videoldm_slots_sd2_slot_by_slot(layout_of):
    assert slot_table(videoldm_slots(layout_of(unet_configs.SD21))) == expected_sd(1024, lambda c: (c // 64, 64))


def test_videoldm_slots_sdxl_slot_by_slot(layout_of):
    c, depth = [320, 640, 1280], [0, 2, 10]
    expected = {}
    for i, block in enumerate([1, 2, 4, 5, 7, 8]):
        level = i // 2
        expected[f"input_blocks.{block}.0"] = ("resblock", c[level], None, None, None, None)
        if depth[level]:
            expected[f"input_blocks.{block}.1"] = ("transformer", c[level], c[level] // 64, 64, depth[level], 2048)
    expected["middle_block.0"] = expected["middle_block.2"] = ("resblock", 1280, None, None, None, None)
    expected["middle_block.1"] = ("transformer", 1280, 20, 64, 10, 2048)
    for block in range(9):
        level = 2 - block // 3
        expected[f"output_blocks.{block}.0"] = ("resblock", c[level], None, None, None, None)
        if depth[level]:
            expected[f"output_blocks.{block}.1"] = ("transformer", c[level], c[level] // 64, 64, depth[level], 2048)
    assert slot_table(videoldm_slots(layout_of(unet_configs.SDXL))) == expected


def test_animatediff_layout_matches_motion_module_positions(layout_of):
    layout = layout_of(unet_configs.SD15)
    slots = animatediff_slots(layout, max_len=32)
    # AnimateDiff v2 (with mid block): 22C² + 21C per module of width C, 453.2M in all
    assert n_params(meta_adapter(slots, placement="animatediff")) == 453_209_280
    resolved = resolve_slots(AdapterSpec("SD1.x", "animatediff", slots), layout, "SD1.x")
    assert resolved["input_blocks.1"] == "input_blocks.1.1"    # after the transformer
    assert resolved["input_blocks.10"] == "input_blocks.10.0"  # level without attention: after the ResBlock
    assert resolved["middle_block"] == "middle_block.1"
    assert resolved["output_blocks.2"] == "output_blocks.2.0"  # before the upsampler
    assert resolved["output_blocks.5"] == "output_blocks.5.1"
    assert len(resolved) == 21
