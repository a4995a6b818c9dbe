"""The pack's entry point: node ids, tooltips, and the model folders it registers."""

import os


def test_every_node_id_is_prefixed_and_every_input_has_a_tooltip(node_classes):
    assert node_classes, "the extension registered no nodes"
    for node_id, cls in node_classes.items():
        schema = cls.define_schema()
        assert node_id.startswith("VideoLDM"), node_id
        assert schema.description, f"{node_id} has no description"
        for item in schema.inputs:
            assert item.tooltip, f"{node_id}.{item.id} has no tooltip"


def test_every_node_has_a_help_page(node_classes):
    from devtools.paths import REPO_ROOT

    for node_id in node_classes:
        page = REPO_ROOT / "web" / "docs" / node_id / "en.md"   # where the frontend looks first
        assert page.exists() and page.read_text().startswith("# "), f"no help page for {node_id}"


def test_temporal_adapters_folder_also_lists_animatediff_models(pack):
    import folder_paths

    registered = folder_paths.get_folder_paths("temporal_adapters")
    ours = os.path.join(folder_paths.models_dir, "temporal_adapters")
    animatediff = os.path.join(folder_paths.models_dir, "animatediff_models")
    assert registered[0] == ours and animatediff in registered
    os.makedirs(animatediff, exist_ok=True)
    with open(os.path.join(animatediff, "mm_sd_v15_v2.safetensors"), "wb") as f:
        f.write(b"\x00")
    with open(os.path.join(animatediff, "readme.txt"), "w") as f:
        f.write("not a model")
    listed = folder_paths.get_filename_list("temporal_adapters")
    assert "mm_sd_v15_v2.safetensors" in listed and "readme.txt" not in listed


def test_entry_point_keeps_paths_the_user_configured(pack):
    import asyncio

    import folder_paths

    folder_paths.add_model_folder_path("temporal_adapters", "/elsewhere/adapters")
    asyncio.run(pack.comfy_entrypoint())  # a second registration must not drop it
    assert "/elsewhere/adapters" in folder_paths.get_folder_paths("temporal_adapters")
