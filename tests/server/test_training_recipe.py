"""The training recipe (workflows/recipes/api/train_on_clips.json) through a real server of its
own: SD1.5 at full size continuing AnimateDiff v3 on the clips in input/my_clips, saved, then
sampled with; frame size 64 px, one step of each. On the CPU everything is fp32: the UNet, the copy
of it training needs outside inference mode, the 417M trainable parameters, their gradients and
Adam's state take this server to about 18 GB, so it runs alone, after test_recipes.py's server
has stopped (and the test process has returned its freed heap: tests/conftest.py)."""

import json

import pytest

from devtools.paths import recipe_prompt
from tests.server.test_recipes import run_video, small


@pytest.fixture(scope="module")
def training_server(recipe_base):
    from devtools.comfy_server import ComfyServer

    with ComfyServer(base_dir=recipe_base) as running:
        yield running


def test_training_temporal_layers_on_a_folder_of_clips(training_server, recipe_base):
    """Continues AnimateDiff v3 on the clips in input/my_clips, saves it, samples with it."""
    prompt = small(json.loads(recipe_prompt("train_on_clips").read_text()), steps=1)
    prompt["5"]["inputs"].update(steps=1, width=64, height=64)
    frames, _ = run_video(training_server, prompt)
    assert len(frames) == prompt["8"]["inputs"]["batch_size"] == 16
    saved = recipe_base / "models" / "temporal_adapters" / "my_motion_module.safetensors"
    assert saved.is_file() and saved.stat().st_size > 100_000_000   # v3's 417M parameters, continued
