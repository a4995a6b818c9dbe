"""The installed copy is the product: the pack installed the README way (devtools.install_copy: its
files in custom_nodes/comfyui-videoldm of a fresh base directory, a folder name with a hyphen,
`pip install -r requirements.txt`, no model step) imports, registers every node, and runs every
template graph's API twin to success on the toy family it ships. The cascade template is README
command 1, which runs it from such a copy too (tests/server/test_demo_command.py)."""

import json
import subprocess
import sys

import pytest

from devtools.frame_strip import read_frames
from devtools.install_copy import README_FOLDER, install_pack
from devtools.paths import API_PROMPTS, WORKFLOWS

TEMPLATES = sorted(p.stem for p in WORKFLOWS.glob("*.json"))


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    base = tmp_path_factory.mktemp("user-comfyui")
    return base, install_pack(base)


@pytest.fixture(scope="module")
def user_server(installed):
    from devtools.comfy_server import ComfyServer

    with ComfyServer(base_dir=installed[0]) as running:
        yield running


def test_every_template_has_an_api_twin_and_nothing_else_is_listed():
    assert TEMPLATES and TEMPLATES == sorted(p.stem for p in API_PROMPTS.glob("*.json"))


def test_the_pack_imports_from_its_hyphenated_folder_with_every_node(user_server, node_classes):
    assert "-" in README_FOLDER
    assert user_server.import_failures() == [], user_server.log_tail()
    ours = {k for k, v in user_server.get_json("/object_info").items() if v.get("python_module") == f"custom_nodes.{README_FOLDER}"}
    assert ours == set(node_classes)


def test_the_training_cli_runs_from_the_hyphenated_folder(installed):
    """train.py imports the pack from its own folder whatever that folder is called: it loads the
    shipped toy bundle and stops at the pack's own check of the data folder (empty here)."""
    from devtools.paths import comfyui_dir

    base, pack = installed
    (base / "no_clips").mkdir()
    config = base / "run.json"
    config.write_text(json.dumps({"checkpoint": str(pack / "toy" / "bundles" / "videoldm_toy.safetensors"),
                                  "mode": "temporal", "output": str(base / "run"), "data": {"folder": str(base / "no_clips")},
                                  "train": {"steps": 1}}))
    done = subprocess.run([sys.executable, str(pack / "train.py"), "--config", str(config), "--comfyui", str(comfyui_dir())],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "TrainingError" in done.stderr and "no_clips" in done.stderr, done.stderr[-2000:]


def check_rollout(prompt, run, frames, fps, base):
    """keyframe from the image model -> Extend Video -> Temporal VAE Decode: every segment's frames."""
    from videoldm_core.rollout import rollout_length

    extend = prompt["12"]["inputs"]
    first = prompt["4"]["inputs"]["batch_size"]
    assert len(frames) == rollout_length(first, extend["segment_length"], extend["context_frames"], extend["segments"])
    assert fps == prompt["7"]["inputs"]["fps"]
    progress = [m["data"] for m in run.messages if m["type"] == "progress" and m["data"]["node"] == "12"]
    assert progress and progress[-1]["value"] == progress[-1]["max"] == extend["segments"] * extend["steps"]


def check_interpolation(prompt, run, frames, fps, base):
    """keyframes -> T-to-4T -> 4T-to-16T: 16T - 15 frames at 16 times the keyframe rate."""
    assert len(frames) == 16 * prompt["4"]["inputs"]["frames"] - 15 == 49
    assert fps == 16 * prompt["12"]["inputs"]["fps"] == 30.0


def check_upscale(prompt, run, frames, fps, base):
    shapes = prompt["4"]["inputs"]
    assert len(frames) == shapes["frames"] and frames[0].shape == (4 * shapes["height"], 4 * shapes["width"], 3)


def check_train(prompt, run, frames, fps, base):
    assert len(frames) == prompt["8"]["inputs"]["batch_size"]
    saved = base / "models" / "temporal_adapters" / f"{prompt['5']['inputs']['save_name']}.safetensors"
    assert saved.is_file()   # created by the pack at start-up, where Load Temporal Adapter looks


CHECKS = {"rollout": check_rollout, "interpolation": check_interpolation, "upscale": check_upscale, "train": check_train}


@pytest.mark.parametrize("name", [t for t in TEMPLATES if t != "cascade"])
def test_every_template_runs_from_the_installed_copy(user_server, installed, name):
    assert set(CHECKS) == set(TEMPLATES) - {"cascade"}
    prompt = json.loads((API_PROMPTS / f"{name}.json").read_text())
    run = user_server.run_prompt(prompt, timeout=900)
    assert run.status == "success", run.error_message() or user_server.log_tail()
    [video] = [p for p in user_server.output_files(run) if p.suffix == ".mp4"]
    frames, fps = read_frames(video)
    CHECKS[name](prompt, run, frames, fps, installed[0])
