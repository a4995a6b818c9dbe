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


def test_each_loader_lists_the_toy_family_files_it_can_read_in_place(pack, node_classes):
    """The committed toy family is registered where it lies (toy/<kind>/), one folder key per kind:
    bundles only for Load Video LDM Bundle (core Load Checkpoint cannot read them), adapters only for
    Load Temporal Adapter, the temporal-decoder add-on only for Load Temporal VAE."""
    import folder_paths

    from devtools.paths import REPO_ROOT
    from devtools.toy_family import NAMES, family_file

    def options(node_id, name):
        [combo] = [i for i in node_classes[node_id].define_schema().inputs if i.id == name]
        return combo.options

    bundles, adapters = options("VideoLDMLoadBundle", "bundle_name"), options("VideoLDMLoadTemporalAdapter", "adapter_name")
    decoders, vaes = options("VideoLDMLoadTemporalVAE", "temporal_decoder"), options("VideoLDMLoadTemporalVAE", "vae_name")
    assert {NAMES["base"], NAMES["x4"]} <= set(bundles) and not {NAMES["predictor"], NAMES["decoder"]} & set(bundles)
    assert {NAMES["predictor"], NAMES["interpolator"], NAMES["x4-temporal"]} <= set(adapters)
    assert NAMES["decoder"] not in adapters and NAMES["base"] not in adapters
    assert NAMES["decoder"] in decoders and NAMES["predictor"] not in decoders
    assert f"videoldm_bundles/{NAMES['base']}" in vaes
    assert NAMES["base"] not in folder_paths.get_filename_list("checkpoints")
    for key in NAMES:   # not copied: the loaders resolve to the files in the pack's own toy/ folder
        folder = {"base": "videoldm_bundles", "x4": "videoldm_bundles", "decoder": "temporal_decoders"}.get(key, "temporal_adapters")
        assert os.path.realpath(folder_paths.get_full_path(folder, NAMES[key])) == str(family_file(REPO_ROOT / "toy", key))
    assert os.path.isdir(os.path.join(folder_paths.models_dir, "temporal_adapters"))   # where Save writes


def test_a_file_of_the_users_wins_over_a_toy_file_of_the_same_name(pack):
    import folder_paths

    from devtools.toy_family import NAMES

    mine = os.path.join(folder_paths.models_dir, "videoldm_bundles", NAMES["base"])
    os.makedirs(os.path.dirname(mine), exist_ok=True)
    with open(mine, "wb") as f:
        f.write(b"\x00")
    try:
        assert folder_paths.get_full_path("videoldm_bundles", NAMES["base"]) == mine
    finally:
        os.remove(mine)
