"""Prompts a hostile API client could send, through the real server's POST /prompt (issue 20, part
B): training folders outside the input folder, NaN and infinite numbers, a synthetic video far
beyond the memory limit, and what the errors tell the client about the server."""

import json
import os

import pytest

from devtools import paths
from devtools.comfy_server import ServerError
from devtools.paths import api_prompt
from devtools.process_memory import peak_rss_bytes, reset_peak_rss, rss_bytes

NAN, INF = float("nan"), float("inf")


def refusal(server, prompt) -> str:
    """The text of the server's 400 answer to `prompt` (it must be refused at validation)."""
    with pytest.raises(ServerError, match="rejected \\(400\\)") as e:
        server.queue_prompt(prompt)
    return str(e.value)


def rss(server) -> int:
    return rss_bytes(server.process.pid)


def shapes_prompt(frames, width=64, height=64, fps=15.0, scale=1) -> dict:
    return {"1": {"class_type": "VideoLDMMovingShapes",
                  "inputs": dict(seed=0, frames=frames, width=width, height=height, fps=fps, scale=scale)},
            "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}


@pytest.mark.parametrize("folder", ["/etc", "../", "../../../../../../etc", "/"])
def test_a_training_folder_outside_the_input_folder_is_refused_without_a_listing(server, folder):
    prompt = json.loads(api_prompt("train").read_text())
    prompt["5"]["inputs"]["folder"] = folder
    message = refusal(server, prompt)
    assert "inside ComfyUI's input folder" in message and "custom_validation_failed" in message
    listed = [n for n in os.listdir(folder if os.path.isabs(folder) else "/etc") if len(n) >= 6]
    assert not [n for n in listed if n in message], message
    assert "ignored" not in message and str(server.base_dir) not in message


@pytest.mark.parametrize("workflow, node, name, value", [
    ("rollout", "12", "cfg", NAN), ("rollout", "12", "context_scale", INF), ("interpolation", "12", "fps", NAN),
    ("interpolation", "12", "cfg", -INF), ("upscale", "5", "noise_augmentation", NAN), ("upscale", "5", "tile_size", 12),
    ("upscale", "4", "fps", NAN), ("train", "5", "learning_rate", NAN)])
def test_non_finite_numbers_are_refused_at_validation(server, workflow, node, name, value):
    prompt = json.loads(api_prompt(workflow).read_text())
    prompt[node]["inputs"][name] = value
    message = refusal(server, prompt)
    assert f"{name} must be" in message and "custom_validation_failed" in message


@pytest.mark.parametrize("workflow, node, inputs, expected", [
    ("rollout", "12", dict(context_frames=4), "the segment overlap (4) must be smaller than the segment length (4)"),
    ("upscale", "5", dict(tile_overlap=64), "tile overlap must be smaller than the tile (64)"),
    ("upscale", "5", dict(chunk_overlap=8, chunk_length=8), "chunk overlap must be smaller than the chunk (8)"),
    ("train", "5", dict(mode="interpolation", clip_frames=8), "clip_frames must be 5, 9, 13, ..., found 8"),
    ("train", "5", dict(mode="8x"), "mode: expected one of"),
    ("train", "5", dict(clip_frames=1), "clip_frames must be")])
def test_inputs_that_cannot_go_together_are_refused_at_validation(server, workflow, node, inputs, expected):
    """Before the nodes upstream sample or encode anything (the cascade's upscale comes after
    keyframes, rollout and two interpolation passes; training after every frame is encoded)."""
    prompt = json.loads(api_prompt(workflow).read_text())
    prompt[node]["inputs"].update(inputs)
    message = refusal(server, prompt)
    assert expected in message and "custom_validation_failed" in message


@pytest.mark.parametrize("workflow, node, name", [("rollout", "12", "cfg"), ("upscale", "5", "tile_size"),
                                                  ("train", "5", "learning_rate"), ("interpolation", "12", "regime")])
def test_a_missing_input_a_node_validates_is_named_as_missing(server, workflow, node, name):
    """Core's own answer for a missing input, not a TypeError from the node's validate_inputs."""
    prompt = json.loads(api_prompt(workflow).read_text())
    del prompt[node]["inputs"][name]
    message = refusal(server, prompt)
    assert "required_input_missing" in message and name in message and "TypeError" not in message
    assert "positional argument" not in message


def test_moving_shapes_beyond_the_limit_is_refused_before_it_allocates(server):
    before = rss(server)
    reset_peak_rss(server.process.pid)   # the peak while refusing, not what is resident after (freed again)
    message = refusal(server, shapes_prompt(4096, 2048, 2048))
    assert "Moving Shapes: frames=4096, width=2048, height=2048, scale=1 imply" in message and "GiB" in message
    # the same size through a link is unknown at validation: the node refuses it when it runs
    prompt = shapes_prompt(["3", 0], 2048, 2048) | {"3": {"class_type": "PrimitiveInt", "inputs": {"value": 4096}}}
    run = server.run_prompt(prompt, timeout=120)
    assert run.status == "error" and "scale=1 imply 384.56 GiB" in run.error_message()   # the clip and its IMAGE copy
    assert peak_rss_bytes(server.process.pid) < 1.1 * before


def test_the_pack_errors_name_the_pack_and_no_server_path(server):
    prompt = shapes_prompt(["3", 0], 2048, 2048, scale=8) | {"3": {"class_type": "PrimitiveInt", "inputs": {"value": 64}}}
    run = server.run_prompt(prompt, timeout=120)
    [error] = [m["data"] for m in run.messages if m["type"] == "execution_error"]
    assert error["exception_type"] == "videoldm.MemoryLimitError"
    for private in (str(server.base_dir), str(paths.comfyui_dir()), str(paths.REPO_ROOT), "custom_nodes"):
        assert private not in error["exception_type"] + error["exception_message"], private


def test_a_small_moving_shapes_prompt_still_runs(server):
    run = server.run_prompt(shapes_prompt(4, 32, 32), timeout=120)
    assert run.status == "success", run.error_message()
