"""The SDXL recipe (workflows/recipes/api/animatediff_sdxl.json) through a real server of its own:
SDXL base at full size with AnimateDiff's SDXL motion module (random weights in their public
layouts, devtools.public_checkpoints), 16 frames at 64 px and one step. On the CPU the UNet is
fp32 (10 GB) beside the fp16 text encoders: this server loads nothing else, and stops before the
training recipe's starts."""

import json

import pytest

from devtools.paths import recipe_prompt
from tests.server.test_recipes import run_video, small


@pytest.fixture(scope="module")
def sdxl_server(recipe_base):
    from devtools.comfy_server import ComfyServer

    with ComfyServer(base_dir=recipe_base) as running:
        yield running


def test_sdxl_with_its_motion_module(sdxl_server):
    prompt = small(json.loads(recipe_prompt("animatediff_sdxl").read_text()), steps=1)
    assert (prompt["1"]["inputs"]["ckpt_name"], prompt["2"]["inputs"]["adapter_name"]) == \
        ("sd_xl_base_1.0.safetensors", "mm_sdxl_v10_beta.ckpt")
    frames, fps = run_video(sdxl_server, prompt)
    assert len(frames) == prompt["6"]["inputs"]["batch_size"] == 16 and frames[0].shape == (64, 64, 3)
    assert fps == prompt["10"]["inputs"]["fps"]
    log = sdxl_server.log_tail(200)
    assert "Requested to load SDXL" in log   # ComfyUI took the file for SDXL, not another family
