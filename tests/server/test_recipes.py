"""The recipes for the weights users own (workflows/recipes/) through a real server, on
random-weight files in the exact public layouts under the public names (devtools.public_checkpoints:
SD1.5 and the SD x4 upscaler at full size, SVD's first stage, AnimateDiff v3/v2 and AnimateLCM
motion modules) and a video file in ComfyUI's input folder, placed by the test. Only the frame
size (64 px; a 32 px video to upscale) and the step count are made small; every node, file and
setting is the recipe's. SDXL's and the training recipe run on servers of their own
(test_sdxl_recipe.py, test_training_recipe.py)."""

import json

import pytest

from devtools.frame_strip import read_frames
from devtools.paths import recipe_prompt


@pytest.fixture(scope="module")
def recipe_server(recipe_base):
    from devtools.comfy_server import ComfyServer

    with ComfyServer(base_dir=recipe_base) as running:
        yield running


def small(prompt: dict, frames: int | None = None, steps: int = 2) -> dict:
    for node in prompt.values():
        if node["class_type"] == "EmptyLatentImage":
            node["inputs"].update(width=64, height=64, **({"batch_size": frames} if frames else {}))
        if node["class_type"] == "KSampler":
            node["inputs"]["steps"] = steps
    return prompt


def run_video(server, prompt):
    run = server.run_prompt(prompt, timeout=1200)
    assert run.status == "success", run.error_message() or server.log_tail()
    [video] = [p for p in server.output_files(run) if p.suffix == ".mp4"]
    return read_frames(video)


@pytest.mark.parametrize("motion_module", ["v3_sd15_mm.ckpt", "mm_sd_v15_v2.ckpt"])
def test_sd15_with_animatediff_and_svds_temporal_decoder(recipe_server, motion_module):
    prompt = small(json.loads(recipe_prompt("animatediff_sd15").read_text()))
    prompt["2"]["inputs"]["adapter_name"] = motion_module
    frames, fps = run_video(recipe_server, prompt)
    assert len(frames) == prompt["6"]["inputs"]["batch_size"] == 16 and frames[0].shape == (64, 64, 3)
    assert fps == prompt["10"]["inputs"]["fps"]


def test_animatelcm_at_few_steps_with_its_spatial_lora(recipe_server):
    """AnimateLCM's text-to-video model is its motion module with its spatial LoRA at 0.8 (as its
    authors run it): every key of the LoRA file, in its public layout, patches the SD1.5 UNet."""
    prompt = small(json.loads(recipe_prompt("animatelcm_sd15").read_text()))
    assert prompt["7"]["inputs"]["sampler_name"] == "lcm"
    lora = prompt["8"]["inputs"]
    assert (prompt["8"]["class_type"], lora["lora_name"], lora["strength_model"]) == \
        ("LoraLoaderModelOnly", "AnimateLCM_sd15_t2v_lora.safetensors", 0.8)
    assert prompt["3"]["inputs"]["model"] == ["8", 0] and lora["model"] == ["1", 0]   # LoRA, then the motion module
    frames, _ = run_video(recipe_server, prompt)
    assert len(frames) == 16
    assert "lora key not loaded" not in recipe_server.log_text()


def test_a_long_video_with_core_context_windows(recipe_server):
    """More frames than the motion module's positions cover in one window: 24 frames in windows of 16."""
    prompt = small(json.loads(recipe_prompt("long_video_context_windows").read_text()), frames=24, steps=1)
    frames, _ = run_video(recipe_server, prompt)
    assert len(frames) == 24


def test_x4_upscaling_of_a_video_file(recipe_server):
    prompt = json.loads(recipe_prompt("upscale_video_file").read_text())
    assert prompt["1"]["inputs"]["file"] == "my_clip.mp4"
    prompt["6"]["inputs"]["steps"] = 2
    frames, fps = run_video(recipe_server, prompt)
    assert len(frames) == 8 and frames[0].shape == (128, 128, 3) and fps == 8.0

