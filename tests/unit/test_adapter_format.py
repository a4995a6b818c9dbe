"""The native temporal-adapter format and the public-format importers (torch only)."""

import json
import math
from pathlib import Path

import pytest
import torch

from devtools.public_layouts import VARIANTS, animatediff_state_dict
from videoldm_core.temporal_adapter import (ADAPTER_METADATA_KEY, AdapterCompatibilityError, AdapterFormatError, AdapterSpec,
                                   TemporalAdapter, read_adapter_spec, resolve_slots, save_adapter)
from videoldm_core.importers import import_adapter
from videoldm_core.importers.animatediff import import_animatediff
from videoldm_core.placement import SpatialLayer, animatediff_slots, videoldm_slots

REFERENCE_KEYS = Path(__file__).resolve().parents[1] / "data" / "keys"

LAYOUT = [
    SpatialLayer("input_blocks.1.0", "resblock", 32, emb_channels=128),
    SpatialLayer("input_blocks.1.1", "transformer", 32, heads=4, dim_head=8, depth=2, context_dim=16),
    SpatialLayer("middle_block.0", "resblock", 32, emb_channels=128),
    SpatialLayer("output_blocks.0.0", "resblock", 32, emb_channels=128),
]


def randomized(adapter):
    torch.manual_seed(0)
    for p in adapter.parameters():
        torch.nn.init.normal_(p)
    return adapter


def test_native_file_round_trips_exactly(tmp_path):
    spec = AdapterSpec("SD1.x", "videoldm", videoldm_slots(LAYOUT), description="test")
    adapter = randomized(TemporalAdapter(spec))
    save_adapter(tmp_path / "a.safetensors", adapter)
    assert read_adapter_spec(tmp_path / "a.safetensors") == spec
    spec2, state_dict = import_adapter(*_read(tmp_path / "a.safetensors"))
    again = TemporalAdapter(spec2).load_weights(state_dict)
    assert all(torch.equal(again.state_dict()[k], v) for k, v in adapter.state_dict().items())


def test_a_save_cut_short_leaves_the_file_there_before_untouched(tmp_path, monkeypatch):
    import videoldm_core.weights_file as weights_file

    spec = AdapterSpec("SD1.x", "videoldm", videoldm_slots(LAYOUT), description="test")
    save_adapter(tmp_path / "a.safetensors", randomized(TemporalAdapter(spec)))
    before = (tmp_path / "a.safetensors").read_bytes()

    def half_write(tensors, path, metadata=None):
        Path(path).write_bytes(b"half an adapter")
        raise OSError("disk full")

    monkeypatch.setattr(weights_file, "save_file", half_write)
    with pytest.raises(OSError, match="disk full"):
        save_adapter(tmp_path / "a.safetensors", TemporalAdapter(spec))
    assert (tmp_path / "a.safetensors").read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors"]


def _read(path):
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata(), path.name


def test_fresh_adapter_has_the_slot_layout_and_trainable_parameters():
    adapter = TemporalAdapter(AdapterSpec("SD1.x", "videoldm", videoldm_slots(LAYOUT)))
    keys = adapter.state_dict()
    assert "input_blocks.1.0.time_stack.out_layers.3.weight" in keys
    assert "input_blocks.1.1.time_stack.1.attn2.to_k.weight" in keys  # depth 2: one temporal block each
    assert torch.count_nonzero(keys["input_blocks.1.0.time_stack.out_layers.3.weight"]) == 0
    assert all(p.requires_grad for p in adapter.parameters())


def test_load_weights_lists_missing_unexpected_and_misshapen_keys():
    spec = AdapterSpec("SD1.x", "videoldm", videoldm_slots(LAYOUT))
    state_dict = dict(TemporalAdapter(spec).state_dict())
    state_dict.pop("middle_block.0.time_mixer.mix_factor")
    state_dict["input_blocks.9.0.surprise"] = torch.zeros(1)
    state_dict["output_blocks.0.0.time_stack.in_layers.2.weight"] = torch.zeros(1, 1, 3, 1, 1)
    with pytest.raises(AdapterFormatError, match=r"1 missing \(e.g. \['middle_block.0.time_mixer.mix_factor'\]\); "
                                                 r"1 unexpected .*surprise.*1 with the wrong shape .*expected \(32, 32, 3, 1, 1\)"):
        TemporalAdapter(spec).load_weights(state_dict, source="x.safetensors")


@pytest.mark.parametrize("metadata, message", [
    ({ADAPTER_METADATA_KEY: "[1, 2]"}, "expected a JSON object in .videoldm_adapter., found list"),
    ({ADAPTER_METADATA_KEY: json.dumps({"family": "SD3", "placement": "videoldm", "slots": {"a": {"kind": "resblock"}}})},
     r"expected family one of .* found 'SD3'"),
    ({ADAPTER_METADATA_KEY: json.dumps({"family": "SD1.x", "placement": "videoldm", "slots": {}, "version": 7})},
     r"expected format version 2 \(older versions are migrated when read\), found 7"),
])
def test_bad_native_metadata_is_explained(metadata, message):
    with pytest.raises(AdapterFormatError, match=message):
        import_adapter({"w": torch.zeros(1)}, metadata, "bad.safetensors")


def test_random_safetensors_is_an_unrecognised_format_with_examples():
    with pytest.raises(AdapterFormatError, match=r"unrecognised temporal adapter format.*found 2 keys like \['conv.bias', 'conv.weight'\]"):
        import_adapter({"conv.weight": torch.zeros(1), "conv.bias": torch.zeros(1)}, {}, "random.safetensors")


def test_lavie_is_named_and_explained():
    with pytest.raises(AdapterFormatError, match="LaVie model.*no hook at that point"):
        import_adapter({"down_blocks.0.attentions.0.transformer_blocks.0.attn_temp.to_q.weight": torch.zeros(1)}, {}, "lavie_base.pt")


def test_lavie_vsr_is_named_and_explained():
    """LaVie's VSR checkpoint in its exact key layout (zero-size tensors: only the names matter)."""
    keys = [line.split("\t")[0] for line in (REFERENCE_KEYS / "lavie_vsr_keys.txt").read_text().splitlines() if line.strip()]
    assert len(keys) == 1158
    with pytest.raises(AdapterFormatError, match=r"LaVie VSR \(x4 upscaler\) model.*no hook at that point"):
        import_adapter({k: torch.zeros(0) for k in keys}, {}, "lavie_vsr.pt")


# --- AnimateDiff --------------------------------------------------------------------------------

@pytest.mark.parametrize("variant, family, max_len, slots", [
    ("v1", "SD1.x", 24, 20),
    ("v2", "SD1.x", 32, 21),
    ("v3", "SD1.x", 32, 20),
    ("sdxl", "SDXL", 32, 15),
    ("animatelcm", "SD1.x", 64, 21),
    ("hotshotxl", "SDXL", 24, 15),
])
def test_animatediff_variants_are_detected_and_load_strictly(variant, family, max_len, slots):
    version = variant
    spec, state_dict = import_adapter(animatediff_state_dict(**VARIANTS[variant]), {}, f"{variant}.ckpt")
    assert (spec.family, spec.source, spec.max_frames, len(spec.slots)) == (family, f"animatediff-{version}", max_len, slots)
    assert spec.placement == "animatediff"
    assert "input_blocks.1" in spec.slots and "output_blocks.0" in spec.slots
    adapter = TemporalAdapter(spec).load_weights(state_dict)
    pe = adapter.state_dict()["input_blocks.1.temporal_transformer.transformer_blocks.0.attention_blocks.0.pos_encoder.pe"]
    assert pe.shape == (1, max_len, 32)


def test_animatediff_with_five_down_blocks_or_none_is_refused():
    with pytest.raises(AdapterFormatError, match=r"expected motion modules in 4 down blocks \(SD1.5\) or 3 \(SDXL\) "
                                                 r".*, found 5"):
        import_animatediff(animatediff_state_dict(widths=[32] * 5))
    up_only = {k: v for k, v in animatediff_state_dict(**VARIANTS["v3"]).items() if not k.startswith("down_blocks.")}
    with pytest.raises(AdapterFormatError, match=r"mm: expected motion modules in 4 down blocks .*, found 0"):
        import_animatediff(up_only, source="mm")


def test_animatediff_slots_resolve_to_the_layer_each_module_follows():
    layout = [SpatialLayer("input_blocks.1.0", "resblock", 32, 128),
              SpatialLayer("input_blocks.1.1", "transformer", 32, heads=4, dim_head=8, depth=1, context_dim=16),
              SpatialLayer("input_blocks.10.0", "resblock", 64, 128),
              SpatialLayer("output_blocks.2.0", "resblock", 64, 128)]
    spec = AdapterSpec("SD1.x", "animatediff", animatediff_slots(layout))
    assert resolve_slots(spec, layout, "SD1.x") == {"input_blocks.1": "input_blocks.1.1", "input_blocks.10": "input_blocks.10.0",
                                                    "output_blocks.2": "output_blocks.2.0"}


def test_family_mismatch_names_both_families():
    spec = AdapterSpec("SD1.x", "videoldm", videoldm_slots(LAYOUT))
    with pytest.raises(AdapterCompatibilityError, match=r"made for SD1.x \(32 channels, context 16\) but the model is SDXL"
                                                        r".*Load an adapter made for SDXL"):
        resolve_slots(spec, LAYOUT, "SDXL", source="'x'")
    wider = [SpatialLayer(l.path, l.kind, 64, l.emb_channels, l.heads, l.dim_head, l.depth, l.context_dim) for l in LAYOUT]
    with pytest.raises(AdapterCompatibilityError, match="has 32 channels, the model's layer input_blocks.1.0 has 64") as e:
        resolve_slots(spec, wider, "SD1.x")
    assert "made for SD1.x (32 channels, context 16) but the model is SD1.x (64 channels" in str(e.value)
    assert "Load an adapter made for SD1.x" not in str(e.value) and "other widths" in str(e.value)


@pytest.mark.parametrize("state_dict, metadata", [
    ({"decoder.up.0.block.0.time_stack.in_layers.2.weight": torch.zeros(1), "decoder.conv_out.time_mix_conv.weight": torch.zeros(1)}, {}),
    ({"w": torch.zeros(1)}, {"videoldm_temporal_decoder": "{}"}),
])
def test_a_temporal_vae_decoder_given_as_an_adapter_points_to_load_temporal_vae(state_dict, metadata):
    with pytest.raises(AdapterFormatError, match=r"'svd_decoder.safetensors': this is a temporal VAE decoder.*Load it with Load Temporal VAE"):
        import_adapter(state_dict, metadata, "'svd_decoder.safetensors'")


# --- SVD ----------------------------------------------------------------------------------------

def reference_state_dict(*names: str) -> dict:
    """Meta tensors in the public layouts `names` (files in tests/data/keys)."""
    shapes = {}
    for name in names:
        for line in (REFERENCE_KEYS / name).read_text().splitlines():
            key, shape = line.split("\t")
            shapes[key] = torch.Size(json.loads(shape))
    return {k: torch.empty(s, device="meta") for k, s in shapes.items()}


@pytest.mark.parametrize("layouts", [("svd_unet_keys.txt",), ("svd_unet_keys.txt", "svd_vae_decoder_keys.txt")],
                         ids=["UNet", "UNet and first stage"])
def test_svd_unet_file_in_its_exact_public_layout_imports_its_656m_temporal_parameters(layouts):
    """The UNet alone, and a whole SVD checkpoint, whose first stage has temporal layers of its own
    (they stay on disk; they once made the file read as a temporal VAE decoder)."""
    state_dict = reference_state_dict(*layouts)
    spec, native = import_adapter(state_dict, {}, "svd.safetensors")
    assert (spec.family, spec.placement, spec.source) == ("SD2.x", "videoldm", "svd")
    kinds = [c["kind"] for c in spec.slots.values()]
    assert kinds.count("resblock") == 22 and kinds.count("transformer") == 16
    with torch.device("meta"):
        adapter = TemporalAdapter(spec)
    assert {k: v.shape for k, v in adapter.state_dict().items()} == {k: v.shape for k, v in native.items()}
    assert sum(v.numel() for v in native.values()) == 656_076_838


def test_an_svd_transformer_narrower_than_its_64_wide_heads_is_refused_naming_its_channels():
    """SVD's head count is the width over 64, not a number the file states: a 32-wide layer is named
    by its channels, not as 'heads 0'."""
    state_dict = {k: v for k, v in reference_state_dict("svd_unet_keys.txt").items()
                  if "input_blocks.1.1." in k}
    narrow = {k: torch.empty(*[32 if n == 320 else n for n in v.shape], device="meta") for k, v in state_dict.items()}
    with pytest.raises(AdapterFormatError, match=r"svd.safetensors: temporal transformer at .*input_blocks.1.1 has 32 "
                                                 r"channels; SVD's attention heads are 64 wide, so expected a multiple of 64"):
        import_adapter(narrow, {}, "svd.safetensors")


def test_an_adapter_is_built_in_the_dtype_and_on_the_device_it_runs_on():
    """Every layer made through `operations` is created in the requested dtype and device (meta: no
    memory at all), the way ComfyUI builds its own UNet layers, never first in fp32 on the CPU."""
    spec = AdapterSpec("SD1.x", "videoldm", videoldm_slots(LAYOUT))
    adapter = TemporalAdapter(spec, dtype=torch.float16, device="meta")
    layers = [m for m in adapter.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv3d, torch.nn.GroupNorm,
                                                                torch.nn.LayerNorm))]
    assert layers and all(p.dtype == torch.float16 and p.is_meta for m in layers for p in m.parameters())
    default = TemporalAdapter(spec)
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in default.parameters())


# --- version 1 files keep loading -----------------------------------------------------------------

def version_1_metadata(**fields) -> dict:
    """A spec as the pack wrote it before version 2: `trained_frames` and `extra` present, no schedule."""
    spec = {"family": "SD1.x", "placement": "videoldm", "slots": videoldm_slots(LAYOUT), "trained_frames": 16,
            "max_frames": None, "source": "native", "description": "", "version": 1, "extra": {},
            "context_encoder": None, "context_frames": [], "interpolation": None, **fields}
    return {ADAPTER_METADATA_KEY: json.dumps(spec)}


def test_a_version_1_native_spec_is_migrated_to_the_base_models_own_schedule():
    spec, _ = import_adapter({}, version_1_metadata(description="old"), "old.safetensors")
    assert (spec.version, spec.description, spec.noise_schedule, spec.clip_norms) == (2, "old", None, [])
    assert "trained_frames" not in json.loads(spec.to_json()) and "extra" not in json.loads(spec.to_json())


def test_a_version_1_interpolation_spec_gets_the_trainers_augmentation_range_of_then():
    spec, _ = import_adapter({}, version_1_metadata(interpolation={"emb_channels": 128, "regimes": 2}), "old.safetensors")
    assert spec.augmentation_range == (0.0, 0.25)


@pytest.mark.parametrize("variant", ["v1", "sdxl"])
def test_a_version_1_save_of_an_imported_motion_module_gets_its_recipe(variant):
    """Save Temporal Adapter of version 1 wrote imported modules with their source; the migration
    gives them what the importer gives the original file today: schedule, clip-wide norms and the
    motion modules' own norm (clip-wide for the SDXL beta module; it once fell to per frame)."""
    original, _ = import_adapter(animatediff_state_dict(**VARIANTS[variant]), {}, "mm.ckpt")
    old = json.loads(original.to_json())
    for key in ("noise_schedule", "clip_norms"):
        old.pop(key)
    old.update(version=1, trained_frames=16, extra={})
    old["slots"] = {path: {k: v for k, v in config.items() if k != "group_norm"} for path, config in old["slots"].items()}
    migrated, _ = import_adapter({}, {ADAPTER_METADATA_KEY: json.dumps(old)}, "saved.safetensors")
    assert (migrated.noise_schedule, migrated.clip_norms) == (original.noise_schedule, original.clip_norms)
    assert migrated.slots == original.slots
    assert {c["group_norm"] for c in migrated.slots.values()} == {"frame" if variant == "v1" else "video"}
    assert migrated.clip_norms == (["resblock", "output"] if variant == "v1" else [])


def spec_with_slot(slot: dict, **fields) -> dict:
    return {ADAPTER_METADATA_KEY: json.dumps({"family": "SD1.x", "placement": "animatediff", "version": 2,
                                              "slots": {"input_blocks.1": slot}, **fields})}


MOTION = {"kind": "motion_module", "channels": 32, "heads": 8, "max_len": 24}


@pytest.mark.parametrize("metadata, message", [
    # loaded fine once, then failed at sampling: a math domain error, a reshape of 0 elements, a stop at step 1
    (spec_with_slot({"kind": "transformer", "channels": 32, "heads": 4, "dim_head": 8, "depth": 1, "max_period": 0}),
     r"max_period: expected a number above 1, found 0"),
    (spec_with_slot(dict(MOTION, heads=64)), r"heads: expected at most its 32 channels .* found 64"),
    (spec_with_slot({"kind": "transformer", "channels": 32, "heads": 8, "dim_head": 8, "depth": 1}),
     r"^'bad.safetensors': slot 'input_blocks.1': expected heads × dim_head equal to its 32 channels .* found 8 × 8 = 64"),
    (spec_with_slot(MOTION, max_frames=32), r"max_frames: 32 frames stated, but slot 'input_blocks.1' holds positions "
                                            r"for 24"),
    (spec_with_slot({"kind": "motion_module", "channels": 32, "heads": 8}, max_frames=64),   # the default table: 32
     r"max_frames: 64 frames stated, but slot 'input_blocks.1' holds positions for 32"),
    # a version-1 spec of the wrong shape: the pack's error naming the file, not a raw TypeError
    ({ADAPTER_METADATA_KEY: json.dumps({"version": 1, "source": ["x"], "family": "SD1.x", "placement": "videoldm",
                                        "slots": {}})}, r"^'bad.safetensors': source: expected a string"),
])
def test_slot_values_that_cannot_run_together_are_refused_when_read(metadata, message):
    with pytest.raises(AdapterFormatError, match=message):
        import_adapter({}, metadata, "'bad.safetensors'")


def test_an_init_file_that_is_not_safetensors_is_refused_by_name(tmp_path):
    (tmp_path / "init.ckpt").write_bytes(b"not a pickle at all" * 10)
    with pytest.raises(AdapterFormatError, match=r"'init.ckpt'"):
        read_adapter_spec(tmp_path / "init.ckpt")


def test_motion_module_indices_outside_the_layout_and_companion_parts_are_refused():
    """down_blocks.0.motion_modules.3 once landed on down_blocks.1.motion_modules.0's slot and replaced
    its weights; PIA's conv_in and AnimateLCM-I2V's image encoder were dropped without a word."""
    state_dict = animatediff_state_dict(**VARIANTS["v2"])
    moved = {k.replace("down_blocks.0.motion_modules.1.", "down_blocks.0.motion_modules.3."): v
             for k, v in state_dict.items()}
    with pytest.raises(AdapterFormatError, match=r"'down_blocks.0.motion_modules.3.* outside AnimateDiff's layout "
                                                 r"\(expected down_blocks.<level>.motion_modules.<0..1>\)"):
        import_animatediff(moved, "'odd.ckpt'")
    middle = {k.replace("mid_block.motion_modules.0.", "mid_block.motion_modules.1."): v for k, v in state_dict.items()}
    with pytest.raises(AdapterFormatError, match=r"outside AnimateDiff's layout \(expected mid_block.motion_modules"):
        import_animatediff(middle, "'odd.ckpt'")
    for extra, name in (({"conv_in.weight": torch.zeros(320, 9, 3, 3)}, "PIA's"),
                        ({"img_encoder.proj.weight": torch.zeros(4, 4)}, "AnimateLCM-I2V's")):
        with pytest.raises(AdapterFormatError, match=rf"this file holds {name} .* the pack does not run"):
            import_adapter({**state_dict, **extra}, {}, "'pia.ckpt'")


@pytest.mark.parametrize("fields, message", [
    (dict(noise_schedule={"betas": "cosine", "beta_start": 0.1, "beta_end": 0.2}), r"expected betas one of"),
    (dict(noise_schedule={"betas": "linear", "beta_start": 0.1}), r"noise_schedule: incomplete"),
    (dict(noise_schedule={"betas": "sqrt_linear", "beta_start": 0.012, "beta_end": 0.00085}),
     r"expected beta_end >= beta_start, found 0.012 > 0.00085"),
    (dict(clip_norms=["attention"]), r"clip_norms: expected a list drawn from \('resblock', 'output'\)"),
    # each value in range, together unusable: infinite noise levels (auto would sample with them)
    (dict(noise_schedule={"betas": "sqrt_linear", "beta_start": 0.5, "beta_end": 0.9}), r"infinite noise levels"),
    # finite in float64, infinite in the float32 the sampling keeps
    (dict(noise_schedule={"betas": "sqrt_linear", "beta_start": 0.00085, "beta_end": 0.5}), r"220 infinite noise levels"),
])
def test_bad_schedule_or_clip_norms_are_explained(fields, message):
    spec = {"family": "SD1.x", "placement": "videoldm", "slots": videoldm_slots(LAYOUT), "version": 2, **fields}
    with pytest.raises(AdapterFormatError, match=message):
        import_adapter({}, {ADAPTER_METADATA_KEY: json.dumps(spec)}, "bad.safetensors")


@pytest.mark.parametrize("betas", ["linear", "sqrt_linear"])
def test_a_constant_beta_is_a_schedule(betas):
    """beta_end == beta_start is a schedule (β constant at every timestep); only β falling is refused.
    Its noise levels are σ_t = √((1 − ᾱ_t) / ᾱ_t) with ᾱ_t = (1 − β)^(t + 1)."""
    schedule = {"betas": betas, "beta_start": 0.01, "beta_end": 0.01, "timesteps": 100}
    spec = {"family": "SD1.x", "placement": "videoldm", "slots": videoldm_slots(LAYOUT), "version": 2,
            "noise_schedule": schedule}
    loaded, _ = import_adapter({}, {ADAPTER_METADATA_KEY: json.dumps(spec)}, "flat.safetensors")
    alphas_cumprod = 0.99 ** torch.arange(1, 101, dtype=torch.float64)
    torch.testing.assert_close(loaded.beta_schedule.sigmas(), ((1 - alphas_cumprod) / alphas_cumprod).sqrt())


@pytest.mark.parametrize("variant, expected", [
    # SD1.5: input blocks 1, 2 | 4, 5 | 7, 8 | 10, 11 hold the two ResBlocks of levels 0..3 (0, 3, 6, 9 are
    # conv_in and the downsamplers); output blocks 0..11 are the three ResBlocks of each level
    ("v2", [f"input_blocks.{n}" for n in (1, 2, 4, 5, 7, 8, 10, 11)] + ["middle_block"]
     + [f"output_blocks.{n}" for n in range(12)]),
    # SDXL: three levels, input blocks 1, 2 | 4, 5 | 7, 8 and output blocks 0..8
    ("sdxl", [f"input_blocks.{n}" for n in (1, 2, 4, 5, 7, 8)] + [f"output_blocks.{n}" for n in range(9)]),
])
def test_animatediff_modules_land_on_the_blocks_of_the_resblocks_they_follow(variant, expected):
    """Motion module j of down block i follows the UNet's input block 1 + 3i + j (after conv_in, two
    ResBlocks and a downsampler per level), module j of up block i output block 3i + j. Off by one,
    level 0's first module would sit on conv_in's block 0 and every other a block too early (a
    downsampler's), which the slot count alone does not show."""
    spec, native = import_adapter(animatediff_state_dict(**VARIANTS[variant]), {}, f"{variant}.ckpt")
    assert sorted(spec.slots) == sorted(expected)
    # the weights of down_blocks.1.motion_modules.1 are those of the slot input_blocks.5
    state_dict = animatediff_state_dict(**VARIANTS[variant])
    source = state_dict["down_blocks.1.motion_modules.1.temporal_transformer.proj_in.weight"]
    assert torch.equal(native["input_blocks.5.temporal_transformer.proj_in.weight"], source)
    source = state_dict["up_blocks.1.motion_modules.2.temporal_transformer.proj_in.weight"]
    assert torch.equal(native["output_blocks.5.temporal_transformer.proj_in.weight"], source)


def test_animatelcm_gets_animatediffs_positional_tables_sin_and_cos_interleaved():
    """AnimateLCM ships no positional tables; the importer recomputes AnimateDiff's PositionalEncoding
    (its motion_module.py): pe[p, 2i] = sin(p · 10000^(−2i/C)), pe[p, 2i + 1] = cos(same), for 64
    positions. Halves (all sines, then all cosines) would give every frame other offsets than the
    ones the module was trained on. Reference computed here from that formula."""
    spec, native = import_adapter(animatediff_state_dict(**VARIANTS["animatelcm"]), {}, "animatelcm.ckpt")
    tables = {k: v for k, v in native.items() if k.endswith("pos_encoder.pe")}
    assert tables and spec.max_frames == 64
    for key, pe in tables.items():
        channels = pe.shape[-1]
        position = torch.arange(64, dtype=torch.float64)[:, None]
        frequency = torch.exp(torch.arange(0, channels, 2, dtype=torch.float64) * (-math.log(10000.0) / channels))
        expected = torch.zeros(1, 64, channels, dtype=torch.float64)
        expected[0, :, 0::2] = torch.sin(position * frequency)
        expected[0, :, 1::2] = torch.cos(position * frequency)
        torch.testing.assert_close(pe.double(), expected, rtol=0, atol=1e-4, msg=key)


@pytest.mark.parametrize("timesteps, label", [(1000, "sqrt_linear 0.00085-0.012"), (500, "sqrt_linear 0.00085-0.012 T500"),
                                              (2000, "sqrt_linear 0.00085-0.012 T2000")])
def test_a_schedule_label_names_any_timestep_count_but_the_default(timesteps, label):
    """The label (the node's choice and the messages' name of a schedule) states the timestep count
    whenever it is not 1000: a 500-step schedule labelled as the 1000-step one would be taken for it."""
    from videoldm_core.noise_schedule import BetaSchedule

    assert BetaSchedule("sqrt_linear", 0.00085, 0.012, timesteps).label == label
