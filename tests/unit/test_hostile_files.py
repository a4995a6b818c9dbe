"""Hostile weight files against the core loaders (adapters, motion modules, temporal-decoder add-ons,
bundle specs): each is refused with the file named and what was expected and found, before
anything the spec declares is allocated (peak RSS measured by the kernel)."""

import json
import pickle
import zipfile

import pytest
import torch
from safetensors.torch import save_file

from devtools import hostile_files as hf
from videoldm_core.bundle import BUNDLE_METADATA_KEY, BundleFormatError, open_bundle
from videoldm_core.errors import VideoLDMError
from videoldm_core.importers import read_adapter_file
from videoldm_core.temporal_adapter import AdapterFormatError, MAX_TABLE_LENGTH
from videoldm_core.temporal_decoder import TemporalDecoderFormatError, read_addon_file
from videoldm_core.weights_file import WeightsFile, WeightsFileError

MIB = 1024 ** 2


@pytest.fixture(scope="module", autouse=True)
def meta_kernels_loaded():
    """torch loads its meta-device kernels on first use (about 110 MiB, once per process): loaded
    before any peak is measured, so a peak is what a refusal costs."""
    for spec, weights in (hf.small_adapter(), hf.small_adapter(hf.SMALL_MOTION_SLOTS, "animatediff"), hf.small_decoder()):
        with torch.device("meta"):
            hf.TemporalAdapter(spec) if hasattr(spec, "slots") else hf.TemporalDecoder(spec)


def refused_within(load, error, limit_bytes=64 * MIB):
    """The message of the error `load()` raises, asserting that the process's peak RSS grew by less
    than `limit_bytes` meanwhile (the bombs declare gigabytes)."""
    caught, grown = hf.refusal_and_peak_growth(load, error)
    assert grown < limit_bytes, f"peak RSS grew by {grown / MIB:.0f} MiB while refusing"
    return str(caught)


def test_an_adapter_declaring_24000_channels_is_refused_at_its_header_cost(tmp_path):
    path = hf.channel_bomb_adapter(tmp_path / "channel_bomb.safetensors")
    assert path.stat().st_size < 64 * 1024
    message = refused_within(lambda: read_adapter_file(path, "bombs/channel_bomb.safetensors"), AdapterFormatError)
    assert message.startswith("'bombs/channel_bomb.safetensors': the weights do not match the adapter spec")
    assert "expected (24000," in message and "found (32," in message
    assert str(tmp_path) not in message


def test_a_motion_module_with_a_30_million_entry_positional_table_is_refused(tmp_path):
    path = hf.table_bomb_motion_module(tmp_path / "table_bomb.safetensors")
    message = refused_within(lambda: read_adapter_file(path, "table_bomb.safetensors"), AdapterFormatError)
    assert f"slot 'input_blocks.1': max_len: expected an integer from 1 to {MAX_TABLE_LENGTH}, found 30000000" in message
    assert message.startswith("'table_bomb.safetensors'")


def test_a_positional_table_longer_than_stored_is_refused(tmp_path):
    spec, weights = hf.small_adapter(hf.SMALL_MOTION_SLOTS, placement="animatediff")
    data = hf.spec_dict(spec)
    data["slots"]["input_blocks.1"]["max_len"] = MAX_TABLE_LENGTH
    path = hf.write_adapter(tmp_path / "long_table.safetensors", data, weights)
    message = refused_within(lambda: read_adapter_file(path, "long_table.safetensors"), AdapterFormatError)
    assert "pos_encoder.pe: expected (1, 4096, 32), found (1, 8, 32)" in message


def test_a_decoder_addon_declaring_30000_output_channels_is_refused(tmp_path):
    path = hf.channel_bomb_addon(tmp_path / "decoder_bomb.safetensors")
    message = refused_within(lambda: read_addon_file(path, "decoder_bomb.safetensors"), TemporalDecoderFormatError)
    assert message.startswith("'decoder_bomb.safetensors': temporal decoder weights do not match its spec")
    assert "2 with the wrong shape (e.g. conv_out.time_mix_conv.bias: expected (30000,), found (3,))" in message


def test_a_spec_of_many_layers_in_a_small_file_stops_while_it_builds(tmp_path):
    spec, weights = hf.small_adapter()
    data = hf.spec_dict(spec)
    data["slots"]["input_blocks.1.1"]["depth"] = 60_000   # within the width bound, far beyond the file
    path = hf.write_adapter(tmp_path / "deep.safetensors", data, weights)
    message = refused_within(lambda: read_adapter_file(path, "deep.safetensors"), AdapterFormatError)
    assert "describes far more layers than the file's" in message


@pytest.mark.parametrize("value, found", [(-5, "-5"), ("32", '"32"'), (True, "true"), (8.5, "8.5"), (None, "null"),
                                          (10 ** 30, "1000000000000000000000000000000")])
def test_a_size_of_the_wrong_type_or_sign_names_file_slot_field_expected_and_found(tmp_path, value, found):
    spec, weights = hf.small_adapter()
    data = hf.spec_dict(spec)
    data["slots"]["input_blocks.1.0"]["channels"] = value
    path = hf.write_adapter(tmp_path / "typed.safetensors", data, weights)
    with pytest.raises(AdapterFormatError) as caught:
        read_adapter_file(path, "typed.safetensors")
    assert str(caught.value) == (f"'typed.safetensors': slot 'input_blocks.1.0': channels: expected an integer from 1 "
                                 f"to 65536, found {found}.")


def test_an_addon_with_a_negative_kernel_or_a_string_width_names_the_key(tmp_path):
    spec, weights = hf.small_decoder()
    for change, expected in (({"kernel_t": -3}, "kernel_t: expected an integer from 1 to 15, found -3"),
                             ({"blocks": {"mid.block_1": "32"}}, "blocks['mid.block_1'] (channels): expected an integer"),
                             ({"blocks": {"__class__": 32}}, "blocks: expected decoder layer paths like mid.block_1")):
        path = hf.write_addon(tmp_path / "a.safetensors", {**hf.spec_dict(spec), **change}, weights)
        with pytest.raises(TemporalDecoderFormatError, match="^'a.safetensors': " + expected.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
            read_addon_file(path, "a.safetensors")


def test_a_slot_path_that_is_not_a_unet_layer_is_refused(tmp_path):
    spec, weights = hf.small_adapter()
    data = hf.spec_dict(spec)
    data["slots"]["__class__"] = data["slots"].pop("input_blocks.1.0")
    path = hf.write_adapter(tmp_path / "p.safetensors", data, weights)
    with pytest.raises(AdapterFormatError, match=r"slot '__class__': expected the path of a UNet layer"):
        read_adapter_file(path, "p.safetensors")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_with_file_and_tensor(tmp_path, bad):
    spec, weights = hf.small_adapter()
    weights["input_blocks.1.1.time_stack.0.attn1.to_q.weight"][3, 2] = bad
    path = hf.write_adapter(tmp_path / "nan.safetensors", hf.spec_dict(spec), weights)
    with pytest.raises(AdapterFormatError, match=r"^'nan.safetensors': tensor 'input_blocks.1.1.time_stack.0.attn1.to_q"
                                                 r".weight' holds 1 non-finite values \(NaN or infinity\)"):
        read_adapter_file(path, "nan.safetensors")
    spec, weights = hf.small_decoder()
    weights["conv_out.time_mix_conv.bias"][0] = bad
    path = hf.write_addon(tmp_path / "nan_decoder.safetensors", hf.spec_dict(spec), weights)
    with pytest.raises(TemporalDecoderFormatError, match="tensor 'conv_out.time_mix_conv.bias' holds 1 non-finite"):
        read_addon_file(path, "nan_decoder.safetensors")


def test_non_finite_weights_in_a_motion_module_checkpoint_are_refused(tmp_path):
    from devtools.public_layouts import animatediff_state_dict

    state_dict = animatediff_state_dict((32, 32, 32, 32), pe_len=8)
    state_dict["down_blocks.0.motion_modules.0.temporal_transformer.proj_in.weight"][0, 0] = float("nan")
    torch.save(state_dict, tmp_path / "mm.ckpt")
    with pytest.raises(AdapterFormatError, match=r"^'mm.ckpt': tensor 'down_blocks.0.motion_modules.0"):
        read_adapter_file(tmp_path / "mm.ckpt", "mm.ckpt")


@pytest.mark.parametrize("channels", [1 << 22, 1 << 16])
def test_a_motion_module_without_tables_declaring_huge_channels_costs_its_header(tmp_path, channels):
    """AnimateLCM ships no positional tables, so the importer makes them: only once the file's
    shapes have been checked (here proj_in holds 0 bytes for its declared rows)."""
    prefix = "down_blocks.3.motion_modules.0.temporal_transformer."
    weights = {prefix + "proj_in.weight": torch.zeros(channels, 0)}
    for block in range(4):
        weights[prefix + f"transformer_blocks.{block}.attention_blocks.0.to_q.weight"] = torch.zeros(0)
    save_file(weights, str(tmp_path / "lcm_bomb.safetensors"))
    message = refused_within(lambda: read_adapter_file(tmp_path / "lcm_bomb.safetensors", "lcm_bomb.safetensors"),
                             AdapterFormatError, limit_bytes=8 * MIB)
    assert message.startswith("'lcm_bomb.safetensors': ")
    assert (f"channels: expected an integer from 1 to 65536, found {channels}" in message if channels > 1 << 16
            else "the weights do not match the adapter spec" in message)


def test_a_pickle_whose_views_repeat_a_few_stored_bytes_is_refused_before_reading(tmp_path):
    """torch.save keeps a view as it is: 4 stored bytes can declare a tensor of 2**40 elements,
    and many tensors can view one storage; both are refused on the pickle's own sizes."""
    from devtools.public_layouts import animatediff_state_dict

    state_dict = animatediff_state_dict((32, 32, 32, 32), pe_len=8)
    key = "down_blocks.0.motion_modules.0.temporal_transformer.proj_in.weight"
    expanded = dict(state_dict, **{key: torch.zeros(1).expand(1 << 20, 1 << 20)})
    torch.save(expanded, tmp_path / "expanded.ckpt")
    message = refused_within(lambda: read_adapter_file(tmp_path / "expanded.ckpt", "expanded.ckpt"), AdapterFormatError)
    assert message.startswith(f"'expanded.ckpt': tensor '{key}' of shape (1048576, 1048576) declares 4398046511104 "
                              "bytes but the file stores 4 for it")
    shared = torch.zeros(1 << 20)
    views = {f"extra.{i}": shared[:] for i in range(64)}   # 64 views of one 4 MiB storage
    torch.save(dict(state_dict, **views), tmp_path / "views.ckpt")
    with pytest.raises(AdapterFormatError, match=r"^'views.ckpt': its tensors declare \d+ bytes, more than twice the "):
        read_adapter_file(tmp_path / "views.ckpt", "views.ckpt")
    torch.save(dict(state_dict, tied=state_dict[key]), tmp_path / "tied.ckpt")   # tied weights share a storage
    assert read_adapter_file(tmp_path / "tied.ckpt", "tied.ckpt")[0].placement == "animatediff"


def test_a_sparse_tensor_in_a_pickle_is_refused_by_name(tmp_path):
    from devtools.public_layouts import animatediff_state_dict

    state_dict = dict(animatediff_state_dict((32, 32, 32, 32), pe_len=8), extra=torch.eye(3).to_sparse())
    torch.save(state_dict, tmp_path / "sparse.ckpt")
    with pytest.raises(AdapterFormatError, match=r"^'sparse.ckpt': tensor 'extra' is sparse_coo; expected dense weights"):
        read_adapter_file(tmp_path / "sparse.ckpt", "sparse.ckpt")


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_complex_weights_are_refused_by_name(tmp_path, suffix):
    from devtools.public_layouts import animatediff_state_dict

    state_dict = animatediff_state_dict((32, 32, 32, 32), pe_len=8)
    key = "down_blocks.0.motion_modules.0.temporal_transformer.proj_in.weight"
    state_dict[key] = torch.full(state_dict[key].shape, complex(float("nan"), 0.0), dtype=torch.complex64)
    path = tmp_path / f"complex{suffix}"
    save_file(state_dict, str(path)) if suffix == ".safetensors" else torch.save(state_dict, path)
    with pytest.raises(AdapterFormatError, match=rf"^'complex{suffix}': tensor '{key}' is complex64; expected real"):
        read_adapter_file(path, path.name)


def test_values_beyond_the_range_of_the_type_weights_are_kept_in_are_refused():
    from videoldm_core.weights_file import check_range

    weights = {"a": torch.ones(4), "b": torch.tensor([1.0, -1e5, 7e4]), "c": torch.tensor([1e300], dtype=torch.float64)}
    with pytest.raises(AdapterFormatError, match=r"^'w': tensor 'b' holds 2 values beyond the range of float16 "
                                                 r"\(largest 65504\)"):
        check_range(weights, torch.float16, "'w'", AdapterFormatError)
    with pytest.raises(AdapterFormatError, match=r"tensor 'c' holds 1 values beyond the range of float32"):
        check_range(weights, torch.float32, "'w'", AdapterFormatError)
    check_range({"a": weights["a"], "b": weights["b"]}, torch.bfloat16, "'w'", AdapterFormatError)


def test_integer_tensors_beyond_the_weight_type_are_refused_too():
    """An int32 100000 in a weight slot became float16 infinity when loaded (only float tensors were
    read); small integers (CLIP's position ids) and flags pass."""
    from videoldm_core.weights_file import check_range

    fine = {"position_ids": torch.arange(77)[None], "flags": torch.tensor([True, False]),
            "small": torch.tensor([-65000, 100], dtype=torch.int32)}
    check_range(fine, torch.float16, "'w'", AdapterFormatError)
    for dtype in (torch.int32, torch.int64):
        with pytest.raises(AdapterFormatError, match=r"tensor 'bias' holds 2 values beyond the range of float16"):
            check_range({"bias": torch.tensor([100000, -100000, 3], dtype=dtype)}, torch.float16, "'w'", AdapterFormatError)
    check_range({"bias": torch.tensor([100000], dtype=torch.int64)}, torch.float32, "'w'", AdapterFormatError)


def test_a_bad_value_past_the_first_chunk_is_found_and_counted():
    """Weights are read chunk by chunk (16M values) from their bounds: a value past the first chunk,
    or only its sign beyond the range, is still found, counted from the chunk that holds it."""
    from videoldm_core.weights_file import check_finite, check_range

    big = torch.zeros((1 << 24) + 10, dtype=torch.float16)
    check_finite({"w": big}, "'w'", AdapterFormatError)
    big[(1 << 24) + 3] = float("-inf")
    with pytest.raises(AdapterFormatError, match=r"tensor 'w' holds 1 non-finite values \(NaN or infinity\) in its first "
                                                 rf"{(1 << 24) + 10} of {(1 << 24) + 10}"):
        check_finite({"w": big}, "'w'", AdapterFormatError)
    wide = torch.zeros((1 << 24) + 10, dtype=torch.float32)
    wide[-1] = -7e4
    with pytest.raises(AdapterFormatError, match=r"tensor 'w' holds 1 values beyond the range of float16"):
        check_range({"w": wide}, torch.float16, "'w'", AdapterFormatError)


def truncations(data: bytes):
    return {"empty": b"", "length only": data[:8], "half a header": data[:20], "header, no data": data[:-100],
            "one byte short": data[:-1]}


@pytest.mark.parametrize("cut", ["empty", "length only", "half a header", "header, no data", "one byte short"])
def test_a_truncated_safetensors_file_is_a_clear_error(tmp_path, cut):
    spec, weights = hf.small_adapter()
    data = hf.write_adapter(tmp_path / "whole.safetensors", hf.spec_dict(spec), weights).read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(truncations(data)[cut])
    with pytest.raises(AdapterFormatError, match=r"^'cut.safetensors': not a readable weights file \(safetensors: .*truncated"):
        read_adapter_file(tmp_path / "cut.safetensors", "cut.safetensors")


def test_a_truncated_or_hostile_pickle_is_a_clear_error(tmp_path):
    from devtools.public_layouts import animatediff_state_dict

    torch.save(animatediff_state_dict((32, 32, 32, 32), pe_len=8), tmp_path / "mm.ckpt")
    data = (tmp_path / "mm.ckpt").read_bytes()
    for n, cut in enumerate((data[:10], data[:len(data) // 2], data[:-30])):
        (tmp_path / f"cut{n}.ckpt").write_bytes(cut)
        with pytest.raises(AdapterFormatError, match=rf"^'cut{n}.ckpt': not a readable weights file \(\w+\)\. The file is "
                                                     r"corrupt or truncated"):
            read_adapter_file(tmp_path / f"cut{n}.ckpt", f"cut{n}.ckpt")

    class Code:
        def __reduce__(self):
            return (print, ("code ran",))

    (tmp_path / "code.pt").write_bytes(pickle.dumps({"w": Code()}, protocol=2))
    with pytest.raises(AdapterFormatError, match="refused to load: the pickle holds more than plain weights"):
        read_adapter_file(tmp_path / "code.pt", "code.pt")
    (tmp_path / "plain.pt").write_bytes(pickle.dumps({"w": 1}))
    with pytest.raises(AdapterFormatError, match=r"refused to load: the pickle holds more than plain weights, or is damaged"):
        read_adapter_file(tmp_path / "plain.pt", "plain.pt")
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    with pytest.raises(AdapterFormatError, match="expected a dictionary of weights, found list"):
        read_adapter_file(tmp_path / "list.pt", "list.pt")
    assert zipfile.is_zipfile(tmp_path / "mm.ckpt")   # mapped from disk, not copied


def test_a_header_declaring_more_bytes_than_the_file_is_refused_before_reading(tmp_path):
    (tmp_path / "h.safetensors").write_bytes((10 ** 12).to_bytes(8, "little") + b"{}")
    with pytest.raises(WeightsFileError, match=r"\(safetensors: its header declares 1000000000000 bytes, the file holds 2 after"):
        WeightsFile(tmp_path / "h.safetensors", "h.safetensors")


@pytest.mark.parametrize("where, value, expected", [
    (("text_encoder_config", "vocab_size"), 40_000_000, "text_encoder_config.vocab_size: expected an integer from 1 to 1048576, found 40000000"),
    (("unet_config", "model_channels"), -320, "unet_config.model_channels: expected an integer from 1 to 65536, found -320"),
    (("unet_config", "channel_mult"), "1,2", 'unet_config.channel_mult a list of 1 to 8 multipliers, found \'1,2\''),
    (("vae_config", "ddconfig"), {"ch": 32}, "vae_config.ddconfig"),
    (("text_encoder_config", "layer_norm_eps"), float("nan"), "text_encoder_config.layer_norm_eps: expected a finite number, found NaN"),
])
def test_a_bundle_spec_with_bad_sizes_is_refused_at_its_header(tmp_path, where, value, expected):
    spec = hf.small_bundle_spec()
    spec[where[0]][where[1]] = value
    save_file({"cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": torch.zeros(49408, 1)},
              str(tmp_path / "b.safetensors"), metadata={BUNDLE_METADATA_KEY: json.dumps(spec)})
    with pytest.raises(BundleFormatError) as caught:
        open_bundle(tmp_path / "b.safetensors", "mine/b.safetensors")
    assert str(caught.value).startswith("'mine/b.safetensors': ") and expected in str(caught.value)


def test_every_loader_error_is_the_packs_own_type():
    for error in (AdapterFormatError, TemporalDecoderFormatError, BundleFormatError):
        assert issubclass(error, WeightsFileError) and issubclass(error, VideoLDMError)
        assert error.__module__ == "videoldm"   # never the server's install path


def test_a_bundle_spec_contradicting_its_embedding_is_refused_at_its_header(tmp_path):
    from videoldm_core.bundle import check_stated_sizes

    spec = hf.small_bundle_spec()
    spec["text_encoder_config"]["vocab_size"] = 60_000
    save_file({"cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": torch.zeros(49408, 64)},
              str(tmp_path / "b.safetensors"), metadata={BUNDLE_METADATA_KEY: json.dumps(spec)})
    bundle, file = open_bundle(tmp_path / "b.safetensors", "b.safetensors")
    with pytest.raises(BundleFormatError, match=r"^'b.safetensors': the spec states vocab_size x hidden_size = \(60000, 64\), "
                                                r"but the file's .*token_embedding.weight has the shape \(49408, 64\)"):
        check_stated_sizes(bundle, file.shapes, file.source)


@pytest.mark.parametrize("legacy", [False, True])
def test_a_pickle_whose_record_names_one_tensor_a_million_times_is_refused_before_loading(tmp_path, legacy):
    """A few MiB of pickle can make torch.load build millions of tensor objects (about 20x the
    record's size): the record is measured first (torch's data.pkl, or the legacy format's pickles
    walked opcode by opcode) and refused above its cap, before anything is built."""
    from devtools.public_layouts import animatediff_state_dict
    from videoldm_core import weights_file

    shared = torch.zeros(1)
    bomb = {f"k{i}": shared for i in range(700_000)}
    torch.save(bomb, tmp_path / "names.ckpt", _use_new_zipfile_serialization=not legacy)
    assert (tmp_path / "names.ckpt").stat().st_size < 16 * MIB
    message = refused_within(lambda: read_adapter_file(tmp_path / "names.ckpt", "names.ckpt"), AdapterFormatError,
                             limit_bytes=32 * MIB)
    cap = weights_file.MAX_LEGACY_RECORD_BYTES if legacy else weights_file.MAX_PICKLE_RECORD_BYTES
    assert message.startswith(f"'names.ckpt': its pickle record is larger than the {cap} bytes a weights file's "
                              "names and shapes take")
    state_dict = animatediff_state_dict((32, 32, 32, 32), pe_len=8)   # a real module's record is far below the cap
    torch.save(state_dict, tmp_path / "real.ckpt", _use_new_zipfile_serialization=not legacy)
    assert read_adapter_file(tmp_path / "real.ckpt", "real.ckpt")[0].placement == "animatediff"


def test_a_pickle_argument_stating_a_petabyte_is_refused_without_asking_for_it(tmp_path):
    """The legacy format's record is walked opcode by opcode: an opcode stating a 2**50-byte
    argument ends the walk at the cap (reading it would raise MemoryError, unnamed)."""
    import struct

    path = tmp_path / "petabyte.pt"
    path.write_bytes(b"\x80\x04\x8e" + struct.pack("<Q", 2**50) + b"abc")   # BINBYTES8 of 2**50 bytes
    message = refused_within(lambda: read_adapter_file(path, "petabyte.pt"), AdapterFormatError)
    assert message.startswith("'petabyte.pt': its pickle record is larger than the ")


def test_a_zip_whose_directory_lists_twenty_thousand_entries_is_refused_before_it_is_parsed(tmp_path):
    """Each entry of a zip's directory becomes an object when the directory is read (about 550 bytes
    for some 90 on disk): the directory's size is read from the end record first."""
    path = tmp_path / "entries.ckpt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({}))
        for i in range(20_000):
            archive.writestr(f"archive/data/{i:040d}", b"")
    message = refused_within(lambda: read_adapter_file(path, "entries.ckpt"), AdapterFormatError, limit_bytes=24 * MIB)
    assert message.startswith("'entries.ckpt': its zip directory is ")
