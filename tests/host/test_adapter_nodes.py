"""Load / Save Temporal Adapter nodes on real files: round trip, formats, and bad files."""

import os
import pickle

import pytest
import torch
from safetensors.torch import save_file


@pytest.fixture(scope="module")
def adapters_dir(pack):
    import folder_paths

    path = folder_paths.get_folder_paths("temporal_adapters")[0]
    os.makedirs(path, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def native_adapter_file(adapters_dir, pack_module, tiny_sd1):
    adapter = pack_module("videoldm_core.temporal_adapter")
    placement = pack_module("videoldm_core.placement")
    layout = pack_module("host.unet_layout").spatial_layout(tiny_sd1[0].model.diffusion_model)
    spec = adapter.AdapterSpec("SD1.x", "animatediff", placement.animatediff_slots(layout, max_len=16), max_frames=16)
    module = adapter.TemporalAdapter(spec)
    torch.manual_seed(0)
    for p in module.parameters():
        torch.nn.init.normal_(p, std=0.05)
    adapter.save_adapter(os.path.join(adapters_dir, "native_tiny.safetensors"), module)
    return "native_tiny.safetensors", module


def load(node_classes, name):
    return node_classes["VideoLDMLoadTemporalAdapter"].execute(adapter_name=name).result[0]


def test_native_file_loads_with_its_spec_and_weights(node_classes, native_adapter_file):
    name, module = native_adapter_file
    loaded = load(node_classes, name)
    assert loaded.spec.placement == "animatediff" and loaded.spec.max_frames == 16
    for key, value in module.state_dict().items():
        assert torch.equal(loaded.patcher.model.state_dict()[key], value), key


def test_save_node_writes_where_the_load_node_lists_and_loads_back_identically(node_classes, native_adapter_file):
    loaded = load(node_classes, native_adapter_file[0])
    shown = node_classes["VideoLDMSaveTemporalAdapter"].execute(temporal_adapter=loaded, filename_prefix="saved/roundtrip")
    assert "saved/roundtrip_00001_.safetensors" in str(shown.ui.as_dict())
    again = load(node_classes, "saved/roundtrip_00001_.safetensors")
    assert again.spec == loaded.spec
    assert all(torch.equal(again.patcher.model.state_dict()[k], v) for k, v in loaded.patcher.model.state_dict().items())


def test_the_default_prefix_saves_at_the_top_of_the_adapters_folder(node_classes, native_adapter_file, adapters_dir):
    save = node_classes["VideoLDMSaveTemporalAdapter"]
    [_, prefix] = save.define_schema().inputs
    shown = str(save.execute(temporal_adapter=load(node_classes, native_adapter_file[0]), filename_prefix=prefix.default).ui.as_dict())
    [name] = [n for n in os.listdir(adapters_dir) if n.startswith(prefix.default)]   # not in a nested folder
    assert name in shown and load(node_classes, name).spec.placement == "animatediff"


def test_apply_node_patches_a_clone_and_applies_strength(node_classes, native_adapter_file, tiny_sd1):
    loaded = load(node_classes, native_adapter_file[0])
    model = tiny_sd1[0]
    apply = node_classes["VideoLDMApplyTemporalAdapter"].execute
    patched = apply(model=model, temporal_adapter=loaded, strength=0.5, attention_distance=8).result[0]
    assert patched is not model and patched.model is model.model
    [applied] = patched.model_options["transformer_options"]["videoldm_adapters"]
    assert applied.attention_distance == 8 and applied.name == "native_tiny.safetensors"
    before, after = torch.zeros(3), torch.full((3,), 4.0)
    assert torch.equal(applied.lerp(before, after), torch.full((3,), 2.0))   # x + s (temporal(x) - x), s = 0.5
    image_model = apply(model=model, temporal_adapter=loaded, strength=0.0, attention_distance=0).result[0]
    assert "videoldm_adapters" not in image_model.model_options.get("transformer_options", {})   # nothing runs


def test_a_pickle_of_a_native_adapters_tensors_is_read_and_refused_for_its_missing_spec(node_classes, native_adapter_file,
                                                                                        adapters_dir):
    """A pickle's tensors are read (weights only; code in one is refused: the test after this), but a
    pickle has no metadata for the native spec, so its keys are no format the pack knows."""
    torch.save({"state_dict": dict(native_adapter_file[1].state_dict())}, os.path.join(adapters_dir, "as_pickle.ckpt"))
    with pytest.raises(Exception, match="unrecognised temporal adapter format"):
        load(node_classes, "as_pickle.ckpt")


class Payload:
    """Unpickling this calls open(marker, "w"): the marker file exists afterwards iff code ran."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_pickle_is_refused_and_its_code_never_runs(node_classes, adapters_dir, tmp_path):
    marker = tmp_path / "code_ran"
    with open(os.path.join(adapters_dir, "evil.pt"), "wb") as f:
        pickle.dump({"down_blocks.0.motion_modules.0.x": Payload(str(marker))}, f)
    pickle.loads(pickle.dumps(Payload(str(tmp_path / "probe"))))
    assert (tmp_path / "probe").exists()   # the payload does run when unpickled without restriction
    with pytest.raises(Exception, match="'evil.pt': refused to load.*only tensors"):
        load(node_classes, "evil.pt")
    assert not marker.exists()


def test_truncated_safetensors_is_a_clear_error(node_classes, native_adapter_file, adapters_dir):
    data = open(os.path.join(adapters_dir, native_adapter_file[0]), "rb").read()
    with open(os.path.join(adapters_dir, "truncated.safetensors"), "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(Exception, match="not a readable weights file.*truncated"):
        load(node_classes, "truncated.safetensors")


def test_random_safetensors_is_unrecognised(node_classes, adapters_dir):
    save_file({"encoder.conv.weight": torch.zeros(2, 2)}, os.path.join(adapters_dir, "vae_by_mistake.safetensors"))
    with pytest.raises(Exception, match="unrecognised temporal adapter format.*encoder.conv.weight"):
        load(node_classes, "vae_by_mistake.safetensors")


def test_missing_and_unknown_keys_are_listed(node_classes, native_adapter_file, adapters_dir):
    from safetensors import safe_open

    path = os.path.join(adapters_dir, native_adapter_file[0])
    with safe_open(path, framework="pt") as f:
        tensors, metadata = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    tensors.pop("input_blocks.1.temporal_transformer.proj_out.weight")
    tensors["input_blocks.1.temporal_transformer.extra.weight"] = torch.zeros(1)
    save_file(tensors, os.path.join(adapters_dir, "damaged.safetensors"), metadata=metadata)
    with pytest.raises(Exception, match=r"1 missing \(e.g. \['input_blocks.1.temporal_transformer.proj_out.weight'\]\)"
                                        r".*1 unexpected \(e.g. \['input_blocks.1.temporal_transformer.extra.weight'\]\)"):
        load(node_classes, "damaged.safetensors")


def test_save_node_refuses_a_prefix_outside_the_adapters_folder(node_classes, native_adapter_file, tmp_path):
    """By real path, before any folder is listed or made: `..`, an absolute path and a symlinked
    subfolder inside models/temporal_adapters that leads out are all refused; nothing is written."""
    import uuid

    import folder_paths

    loaded = load(node_classes, native_adapter_file[0])
    root = folder_paths.get_folder_paths("temporal_adapters")[0]
    link = f"link_out_{uuid.uuid4().hex[:8]}"
    os.symlink(tmp_path, os.path.join(root, link))
    for prefix in ("../../escaped", str(tmp_path / "absolute"), f"{link}/evil", f"{link}/deeper/evil"):
        with pytest.raises(Exception, match="expected a filename_prefix inside models/temporal_adapters"):
            node_classes["VideoLDMSaveTemporalAdapter"].execute(temporal_adapter=loaded, filename_prefix=prefix)
    assert list(tmp_path.iterdir()) == []
