"""The pack inside a real ComfyUI server: it imports cleanly, every node is served with
tooltips and help pages, and the import-failure check itself catches a broken pack."""

import json

from devtools.comfy_server import ComfyServer


def pack_nodes(object_info):
    return {k: v for k, v in object_info.items() if v.get("python_module", "").startswith("custom_nodes.")}


def test_server_log_has_no_import_failure(server):
    assert server.import_failures() == []
    assert "comfyui_videoldm" in server.log_text()  # listed under "Import times for custom nodes"


def test_every_pack_node_is_served_with_tooltips_on_every_input(server):
    ours = pack_nodes(server.get_json("/object_info"))
    assert "VideoLDMLoadBundle" in ours
    for node_id, info in ours.items():
        assert node_id.startswith("VideoLDM")
        assert info["python_module"] == "custom_nodes.comfyui_videoldm"
        for section in ("required", "optional"):
            for name, spec in info["input"].get(section, {}).items():
                options = spec[1] if len(spec) > 1 else {}
                assert options.get("tooltip"), f"{node_id}.{name} has no tooltip"


def test_help_pages_are_served_where_the_frontend_looks_first(server):
    """The frontend's NodeHelpService asks `/extensions/<pack>/docs/<NodeId>/<locale>.md` first (and
    `<NodeId>.md` only after a 404): the English page answers the first request."""
    for node_id in pack_nodes(server.get_json("/object_info")):
        status, body = server.get_bytes(f"/extensions/comfyui_videoldm/docs/{node_id}/en.md")
        assert status == 200 and body.startswith(b"# "), node_id


def test_import_failure_check_catches_a_broken_pack(server_base_dir, tmp_path):
    """ComfyUI itself starts (and exits 0 under --quick-test-for-ci) when a pack fails to import;
    the harness must see it in the log, or a broken pack would pass CI."""
    base = tmp_path / "base"
    (base / "custom_nodes" / "broken_pack").mkdir(parents=True)
    (base / "custom_nodes" / "broken_pack" / "__init__.py").write_text("import a_module_that_does_not_exist\n")
    (base / "custom_nodes" / "comfyui_videoldm").symlink_to(server_base_dir / "custom_nodes" / "comfyui_videoldm")
    with ComfyServer(base_dir=base) as broken:
        failures = broken.import_failures()
        assert any("broken_pack" in line for line in failures), broken.log_tail()
        assert not any("comfyui_videoldm" in line for line in failures)
        assert "VideoLDMLoadBundle" in broken.get_json("/object_info")


def test_templates_list_exactly_the_ui_graphs(server):
    """ComfyUI lists `workflows/*.json` of a pack as its templates: the UI graphs only (API twins
    live in workflows/api/, which it does not list, and would open an empty canvas)."""
    from devtools.paths import WORKFLOWS, pack_module_name

    listed = server.get_json("/workflow_templates")
    assert sorted(listed[pack_module_name()]) == sorted(p.stem for p in WORKFLOWS.glob("*.json"))
    for name in listed[pack_module_name()]:
        status, body = server.get_bytes(f"/api/workflow_templates/{pack_module_name()}/{name}.json")
        assert status == 200 and "nodes" in json.loads(body), name
