"""The example prompts (API twins in workflows/api/) through the real server's POST /prompt and
websocket: what each writes, its progress, and the clear errors of inputs changed from them. That
each runs as shipped, from a copy installed the README way, is tests/server/test_installed_copy.py."""

import json
import re

import pytest

from devtools.frame_strip import read_frames as read_video
from devtools.paths import api_prompt


def test_interpolation_with_a_non_interpolation_adapter_fails_clearly(server):
    prompt = json.loads(api_prompt("interpolation").read_text())
    prompt["1"]["inputs"]["bundle_name"] = "videoldm_demo_tiny.safetensors"   # the motion module's UNet
    prompt["9"]["inputs"]["adapter_name"] = "videoldm_demo_motion_module.safetensors"
    run = server.run_prompt(prompt)
    assert run.status == "error" and "expected a model with an interpolation adapter applied" in run.error_message()


def test_unknown_regime_is_refused_at_validation(server):
    from devtools.comfy_server import ServerError

    prompt = json.loads(api_prompt("interpolation").read_text())
    prompt["12"]["inputs"]["regime"] = "8x"
    with pytest.raises(ServerError, match="value_not_in_list|not in list"):
        server.queue_prompt(prompt)


@pytest.mark.parametrize("change, message", [({"segments": 0}, "segments"), ({"context_frames": 8}, "smaller than the segment length")])
def test_bad_rollouts_are_refused(server, change, message):
    from devtools.comfy_server import ServerError

    prompt = json.loads(api_prompt("rollout").read_text())
    prompt["12"]["inputs"].update(change)
    try:
        run = server.run_prompt(prompt)
    except ServerError as e:   # refused at validation (min/max)
        assert message in str(e)
        return
    assert run.status == "error" and message in run.error_message()


def test_upscale_prompt_writes_4x_frames_and_reports_every_tile_step(server):
    """low-res Moving Shapes -> Video Upscale (x4 bundle, 3x3 tiles x 3 chunks) -> Temporal VAE Decode -> mp4."""
    prompt = json.loads(api_prompt("upscale").read_text())
    upscale = prompt["5"]["inputs"]
    upscale.update(tile_size=32, tile_overlap=16, chunk_length=4, chunk_overlap=1, steps=2)
    run = server.run_prompt(prompt)
    assert run.status == "success", run.error_message() or server.log_tail()
    [video] = [p for p in server.output_files(run) if p.suffix == ".mp4"]
    frames, fps = read_video(video)
    shapes = prompt["4"]["inputs"]
    assert len(frames) == shapes["frames"] and frames[0].shape == (4 * shapes["height"], 4 * shapes["width"], 3)
    progress = [m["data"] for m in run.messages if m["type"] == "progress" and m["data"]["node"] == "5"]
    regions = 3 * 3 * 3  # tiles of 32 over 64 px with overlap 16: 3 per side; chunks of 4 over 8 frames, overlap 1: 3
    assert progress and progress[-1]["value"] == progress[-1]["max"] == regions * upscale["steps"]


def test_upscaling_with_an_image_model_fails_the_prompt_naming_it(server):
    prompt = json.loads(api_prompt("upscale").read_text())
    prompt["1"]["inputs"]["bundle_name"] = "videoldm_toy.safetensors"
    prompt["5"]["inputs"]["model"] = ["1", 0]
    run = server.run_prompt(prompt)
    assert run.status == "error" and "expected an SD x4 upscaler MODEL" in run.error_message()


def test_a_non_bundle_fails_the_prompt_with_a_clear_error(server, server_base_dir):
    from safetensors.torch import save_file
    import torch

    save_file({"model.diffusion_model.out.2.weight": torch.zeros(1)},
              str(server_base_dir / "models" / "checkpoints" / "someone_elses_model.safetensors"))
    prompt = json.loads(api_prompt("rollout").read_text())
    prompt["1"]["inputs"]["bundle_name"] = "someone_elses_model.safetensors"
    run = server.run_prompt(prompt)
    assert run.status == "error"
    assert "not a Video LDM bundle" in run.error_message() and "Load Checkpoint" in run.error_message()


def test_unknown_bundle_name_is_refused_at_validation(server):
    from devtools.comfy_server import ServerError

    prompt = json.loads(api_prompt("rollout").read_text())
    prompt["1"]["inputs"]["bundle_name"] = "no_such_file.safetensors"
    with pytest.raises(ServerError, match="value_not_in_list|not in list"):
        server.queue_prompt(prompt)


@pytest.mark.parametrize("window, overlap, message", [(0, 0, "window must be at least 1, found 0"),
                                                      (8, 8, "less than the window (8 frames), found 8")])
def test_bad_decode_windows_are_refused_at_validation(server, window, overlap, message):
    from devtools.comfy_server import ServerError

    prompt = json.loads(api_prompt("rollout").read_text())
    prompt["6"]["inputs"].update(window=window, overlap=overlap)
    with pytest.raises(ServerError, match=re.escape(message)):
        server.queue_prompt(prompt)


def test_training_prompt_saves_an_adapter_that_load_temporal_adapter_then_loads(server, server_base_dir):
    """Moving Shapes -> Train Temporal Adapter (saved) -> sample with it; then a second prompt loads
    the saved file with Load Temporal Adapter."""
    prompt = json.loads(api_prompt("train").read_text())
    prompt["5"]["inputs"]["seed"] = 3   # not the cached run of the generic test: the node must execute
    prompt["5"]["inputs"]["save_name"] = "videoldm_api_trained/seed3"
    run = server.run_prompt(prompt)
    assert run.status == "success", run.error_message() or server.log_tail()
    saved = server_base_dir / "models" / "temporal_adapters" / "videoldm_api_trained" / "seed3.safetensors"
    assert saved.is_file()
    progress = [m["data"] for m in run.messages if m["type"] == "progress" and m["data"]["node"] == "5"]
    assert progress and progress[-1]["value"] == progress[-1]["max"] == prompt["5"]["inputs"]["steps"]
    [video] = [p for p in server.output_files(run) if p.suffix == ".mp4"]
    assert len(read_video(video)[0]) == prompt["8"]["inputs"]["batch_size"]

    reuse = json.loads(api_prompt("train").read_text())
    del reuse["5"], reuse["6"], reuse["4"]
    reuse["20"] = {"class_type": "VideoLDMLoadTemporalAdapter", "inputs": {"adapter_name": "videoldm_api_trained/seed3.safetensors"}}
    reuse["7"]["inputs"]["temporal_adapter"] = ["20", 0]
    run = server.run_prompt(reuse)
    assert run.status == "success", run.error_message() or server.log_tail()


def test_training_a_prediction_mode_on_a_motion_module_fails_the_prompt_clearly(server):
    prompt = json.loads(api_prompt("train").read_text())
    prompt["1"]["inputs"]["bundle_name"] = "videoldm_demo_tiny.safetensors"   # the motion module's UNet
    prompt["20"] = {"class_type": "VideoLDMLoadTemporalAdapter", "inputs": {"adapter_name": "videoldm_demo_motion_module.safetensors"}}
    prompt["5"]["inputs"].update(mode="prediction", temporal_adapter=["20", 0], save_name="")
    run = server.run_prompt(prompt)
    assert run.status == "error"
    assert "needs an adapter with a context encoder" in run.error_message()
