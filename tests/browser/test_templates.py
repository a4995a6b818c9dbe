"""The pack's templates as a user meets them in the real frontend: the template list holds exactly
the template UI graphs, each with a thumbnail; each opens from its template URL with no missing
node, no missing model (every combo value among the options the server lists) and no console
error or 404; each is laid out in stage groups with no overlapping nodes, and at fit-to-view in a
1080p window it opens at a zoom where the frontend still draws text."""

import json

import pytest

from devtools.graph_layout import STAGES
from devtools.paths import WORKFLOWS, pack_module_name

TEMPLATES = sorted(p.stem for p in WORKFLOWS.glob("*.json"))
LOD_ZOOM = 0.6   # below about 0.57 (8 px of 14 px text, the frontend's default) nodes are drawn without text


def severe(entries):
    return [e for e in entries if e["level"] == "SEVERE"]


def overlap(a, b) -> bool:
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def inside(box, group) -> bool:
    return (group[0] <= box[0] and box[0] + box[2] <= group[0] + group[2]
            and group[1] <= box[1] and box[1] + box[3] <= group[1] + group[3])


def test_the_frontend_lists_exactly_the_template_graphs_each_with_a_thumbnail(frontend):
    listed = frontend._async("return await window.app.api.getWorkflowTemplates();")
    assert sorted(listed[pack_module_name()]) == TEMPLATES == sorted(STAGES)
    for name in TEMPLATES:
        status = frontend._async("return (await fetch(args[0])).status;",
                                 f"/api/workflow_templates/{pack_module_name()}/{name}.jpg")
        assert status == 200, name


@pytest.mark.parametrize("name", TEMPLATES)
def test_each_template_opens_complete_readable_and_without_errors(frontend, name, tmp_path):
    frontend.read_console()
    graph = frontend._async("return await (await fetch(args[0])).json();",
                            f"/api/workflow_templates/{pack_module_name()}/{name}.json")
    assert graph == json.loads((WORKFLOWS / f"{name}.json").read_text())
    loaded = frontend.load_workflow(graph)
    assert [n["type"] for n in loaded if not n["registered"]] == []
    layout = frontend.graph_layout()
    assert [(n["id"], n["missing"]) for n in layout["nodes"] if n["missing"]] == []
    stages = STAGES[name][0]
    assert [g["title"] for g in layout["groups"]] == [s.title for s in stages]
    boxes = [n["box"] for n in layout["nodes"]]
    assert [(a["id"], b["id"]) for i, a in enumerate(layout["nodes"]) for b in layout["nodes"][i + 1:]
            if overlap(a["box"], b["box"])] == []
    assert all(sum(inside(box, g["box"]) for g in layout["groups"]) == 1 for box in boxes)
    assert frontend.fit_view_screenshot(tmp_path / f"{name}.png") >= LOD_ZOOM
    assert severe(frontend.read_console()) == []


def test_the_overlap_check_sees_two_nodes_placed_on_each_other(frontend):
    """The layout checks above must be able to fail."""
    graph = json.loads((WORKFLOWS / f"{TEMPLATES[0]}.json").read_text())
    graph["nodes"][1]["pos"] = list(graph["nodes"][0]["pos"])
    frontend.load_workflow(graph)
    nodes = frontend.graph_layout()["nodes"]
    assert overlap(nodes[0]["box"], nodes[1]["box"])
    frontend.read_console()


def test_the_missing_model_check_sees_a_file_the_server_does_not_list(frontend):
    graph = json.loads((WORKFLOWS / "rollout.json").read_text())
    [loader] = [n for n in graph["nodes"] if n["type"] == "VideoLDMLoadTemporalAdapter"]
    loader["widgets_values"] = ["no_such_adapter.safetensors"]
    frontend.load_workflow(graph)
    missing = [n["missing"] for n in frontend.graph_layout()["nodes"] if n["type"] == "VideoLDMLoadTemporalAdapter"]
    assert missing == [["adapter_name=no_such_adapter.safetensors"]]
    frontend.read_console()   # the frontend may report the missing model; not an error of the next test
