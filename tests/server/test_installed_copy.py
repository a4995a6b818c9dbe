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


@pytest.mark.parametrize("name", [t for t in TEMPLATES if t != "cascade"])
def test_every_template_runs_from_the_installed_copy(user_server, name):
    prompt = json.loads((API_PROMPTS / f"{name}.json").read_text())
    run = user_server.run_prompt(prompt, timeout=900)
    assert run.status == "success", run.error_message() or user_server.log_tail()
    outputs = user_server.output_files(run)
    videos = [p for p in outputs if p.suffix == ".mp4"]
    assert videos, outputs
    for video in videos:
        frames, fps = read_frames(video)
        assert len(frames) > 1 and fps > 0
