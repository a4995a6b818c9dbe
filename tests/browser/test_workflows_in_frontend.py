"""Every UI workflow in workflows/ (the templates), workflows/recipes/ and workflows/long/ opens in the real frontend
with no missing node types and no console errors, and converts back to exactly its API twin."""

import json

import pytest

from devtools.paths import LONG, RECIPES, WORKFLOWS

UI_WORKFLOWS = sorted(WORKFLOWS.glob("*.json")) + sorted(RECIPES.glob("*.json")) + sorted(LONG.glob("*.json"))

PACK_MARKERS = ("comfyui_videoldm", "VideoLDM")


@pytest.fixture(scope="module", autouse=True)
def users_video(server_base_dir):
    """The video the upscale recipe loads, where a user uploads it (ComfyUI/input): Load Video
    previews it as the graph opens."""
    from devtools.synthetic_data import write_users_video

    write_users_video(server_base_dir / "input")


def severe(entries):
    return [e for e in entries if e["level"] == "SEVERE"]


def test_frontend_start_up_logs_nothing_about_the_pack(frontend):
    """On a fresh profile the host's frontend logs its own errors at start-up (404s for user
    files, its default template's model downloads on a closed network); none may come from us."""
    frontend.read_console()
    assert frontend.console, "no console entries were captured at all"
    assert [e for e in frontend.console if any(m in e["message"] for m in PACK_MARKERS)] == []


def test_every_pack_node_is_registered_in_the_frontend(frontend, server):
    ours = {k for k, v in server.get_json("/object_info").items()
            if v.get("python_module") == "custom_nodes.comfyui_videoldm"}
    assert ours and ours <= frontend.registered_node_types()


@pytest.mark.parametrize("workflow", UI_WORKFLOWS, ids=lambda p: p.stem)
def test_ui_workflow_loads_with_no_missing_nodes_or_console_errors(frontend, workflow):
    frontend.read_console()  # what came before belongs to earlier steps
    data = json.loads(workflow.read_text())
    loaded = frontend.load_workflow(data)
    assert sorted(str(n["id"]) for n in loaded) == sorted(str(n["id"]) for n in data["nodes"])
    assert [n["type"] for n in loaded if not n["registered"]] == []
    assert severe(frontend.read_console()) == []


@pytest.mark.parametrize("workflow", UI_WORKFLOWS, ids=lambda p: p.stem)
def test_ui_workflow_converts_to_its_api_twin(frontend, workflow):
    api_twin = json.loads((workflow.parent / "api" / workflow.name).read_text())
    frontend.load_workflow(json.loads(workflow.read_text()))
    prompt = frontend.graph_to_prompt()
    assert set(prompt) == set(api_twin)
    for node_id, node in api_twin.items():
        assert prompt[node_id]["class_type"] == node["class_type"]
        # the frontend also queues its own preview widgets (core Load Video's "video-preview"); the server ignores them
        queued = {k: v for k, v in prompt[node_id]["inputs"].items() if not k.endswith("-preview")}
        assert queued == node["inputs"], f"node {node_id} ({node['class_type']})"


def test_missing_node_check_sees_an_unknown_node_type(frontend):
    """The check above must be able to fail: a workflow naming an uninstalled node is reported."""
    data = json.loads(UI_WORKFLOWS[0].read_text())
    data["nodes"][0] = {**data["nodes"][0], "type": "VideoLDMNodeThatDoesNotExist"}
    loaded = frontend.load_workflow(data)
    assert [n["type"] for n in loaded if not n["registered"]] == ["VideoLDMNodeThatDoesNotExist"]
    frontend.read_console()  # the frontend may log the missing node; not an error of the next test


def test_a_new_train_node_keeps_its_seed_and_a_sampling_node_draws_a_new_one(frontend):
    """Train Temporal Adapter's seed control starts at 'fixed': queueing again for a change downstream
    would otherwise train again (and save another file); so does Moving Shapes', whose video a train
    node reads (a new video each queue trains again too). The sampling nodes keep core's 'randomize'."""
    def control(node_type):
        widgets = frontend.new_node_widgets(node_type)
        names = [name for name, _ in widgets]
        return widgets[names.index("seed") + 1][1]

    assert control("VideoLDMTrainTemporalAdapter") == "fixed"
    assert control("VideoLDMMovingShapes") == "fixed"
    trainer = json.loads((WORKFLOWS / "train.json").read_text())
    shapes = next(n for n in trainer["nodes"] if n["type"] == "VideoLDMMovingShapes")
    assert shapes["widgets_values"][1] == "fixed"   # the shipped template as saved
    assert control("VideoLDMExtendVideo") == "randomize"
