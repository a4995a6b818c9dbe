"""Latent previews and progress from the pack's self-sampling nodes, as core KSampler sends them:
a server started with a preview method sends binary previews over the websocket while Extend Video,
Interpolate Keyframes and Video Upscale run."""

import json

import pytest

from devtools.paths import api_prompt

SAMPLING_NODES = {"rollout": "VideoLDMExtendVideo", "interpolation": "VideoLDMInterpolateKeyframes",
                  "upscale": "VideoLDMVideoUpscale"}


@pytest.fixture(scope="module")
def previewing_server(server_base_dir):
    from devtools.comfy_server import ComfyServer

    with ComfyServer(base_dir=server_base_dir, extra_args=("--preview-method", "latent2rgb")) as running:
        yield running


@pytest.mark.parametrize("name", list(SAMPLING_NODES))
def test_self_sampling_nodes_send_latent_previews(previewing_server, name):
    prompt = json.loads(api_prompt(name).read_text())
    nodes = [k for k, v in prompt.items() if v["class_type"] == SAMPLING_NODES[name]]
    for node_id in nodes:   # fewer steps than the example: previews are the point here
        prompt[node_id]["inputs"].update(steps=2, **({"segments": 2} if name == "rollout" else {}))
    run = previewing_server.run_prompt(prompt)
    assert run.status == "success", run.error_message() or previewing_server.log_tail()
    for node_id in nodes:   # interpolation runs twice (T-to-4T, 4T-to-16T)
        previews = [m for m in run.messages if m["type"] == "binary_preview" and m["data"]["node"] == node_id]
        assert previews and all(m["data"]["bytes"] > 8 for m in previews), node_id
        progress = [m["data"] for m in run.messages if m["type"] == "progress" and m["data"]["node"] == node_id]
        assert progress and progress[-1]["value"] == progress[-1]["max"], node_id
