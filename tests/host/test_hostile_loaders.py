"""Hostile files through the loader nodes in real ComfyUI (Load Temporal Adapter, Load Temporal VAE,
Load Video LDM Bundle): each is refused with the pack's error naming the file as listed in its
models folder (never its server path), before what its spec declares is allocated."""

import json
import os
import pickle

import pytest
import torch
from safetensors.torch import save_file

from devtools import hostile_files as hf
from devtools import tiny_bundles

MIB = 1024 ** 2


@pytest.fixture(scope="module")
def folders(pack):
    import folder_paths

    out = {}
    for key in ("temporal_adapters", "temporal_decoders", "vae", "videoldm_bundles"):
        out[key] = folder_paths.get_folder_paths(key)[0]
        os.makedirs(out[key], exist_ok=True)
    return out


@pytest.fixture(scope="module")
def tiny_bundle_parts(pack):
    spec = tiny_bundles.tiny_sd1_spec()
    return spec, tiny_bundles.random_bundle_state_dict(spec, seed=3)


@pytest.fixture(scope="module")
def image_vae(folders, tiny_bundle_parts):
    """models/vae/hostile_tests/tiny_vae.safetensors: a valid image VAE; returns its state dict."""
    _, state_dict = tiny_bundle_parts
    vae = {k[len("first_stage_model."):]: v.contiguous() for k, v in state_dict.items() if k.startswith("first_stage_model.")}
    os.makedirs(os.path.join(folders["vae"], "hostile_tests"), exist_ok=True)
    save_file(vae, os.path.join(folders["vae"], "hostile_tests", "tiny_vae.safetensors"))
    return vae


def pack_errors() -> tuple:
    """VideoLDMError as the pack's modules know it (imported under its installed name) and as these
    tests import it."""
    import sys

    return tuple(m.VideoLDMError for name, m in sys.modules.items() if name.endswith("videoldm_core.errors"))


def refused(run, limit_bytes=64 * MIB) -> str:
    """The pack's error from `run()`, with the peak RSS growth meanwhile below `limit_bytes`."""
    import folder_paths

    caught, grown = hf.refusal_and_peak_growth(run, pack_errors())
    assert grown < limit_bytes, f"peak RSS grew by {grown / MIB:.0f} MiB while refusing"
    assert folder_paths.base_path not in str(caught) and folder_paths.models_dir not in str(caught)
    return str(caught)


def test_the_three_memory_bombs_are_refused_by_the_loader_nodes(node_classes, folders, image_vae):
    for name in ("channel_bomb.safetensors", "table_bomb.safetensors"):
        hf.MEMORY_BOMBS[name](os.path.join(folders["temporal_adapters"], name))
        message = refused(lambda: node_classes["VideoLDMLoadTemporalAdapter"].execute(adapter_name=name))
        assert message.startswith(f"'{name}': ")
    hf.channel_bomb_addon(os.path.join(folders["temporal_decoders"], "decoder_bomb.safetensors"))
    message = refused(lambda: node_classes["VideoLDMLoadTemporalVAE"].execute(
        vae_name="vae/hostile_tests/tiny_vae.safetensors", temporal_decoder="decoder_bomb.safetensors"))
    assert message.startswith("'decoder_bomb.safetensors': temporal decoder weights do not match its spec")


def write_vae(folders, name, data: bytes | None = None, state_dict=None):
    path = os.path.join(folders["vae"], "hostile_tests", name)
    if data is not None:
        with open(path, "wb") as f:
            f.write(data)
    else:
        save_file(state_dict, path) if name.endswith(".safetensors") else torch.save(state_dict, path)
    return f"vae/hostile_tests/{name}"


class Code:
    def __reduce__(self):
        return (os.system, ("echo code ran",))


@pytest.mark.parametrize("case, expected", [
    ("header too small", r"'hostile_tests/small.safetensors': not a readable weights file \(safetensors: 4 bytes, less than its 8-byte header"),
    ("truncated", r"'hostile_tests/cut.safetensors': not a readable weights file \(safetensors: .*truncated"),
    ("code in a pickle", r"'hostile_tests/code.ckpt': refused to load: the pickle holds more than plain weights"),
    ("truncated pickle", r"'hostile_tests/eof.ckpt': refused to load: the pickle holds more than plain weights, or is damaged"),
    ("empty pickle", r"'hostile_tests/empty.ckpt': not a readable weights file \(EOFError\)"),
    ("not a vae", r"'hostile_tests/unet.safetensors': not a KL autoencoder"),
    ("a million blocks", r"'hostile_tests/deep.safetensors': its VAE spec describes far more layers than the file's"),
    ("nan", r"'hostile_tests/nan.safetensors': tensor 'decoder.conv_in.weight' holds 1 non-finite values"),
])
def test_load_temporal_vae_names_the_file_for_every_broken_vae(node_classes, folders, image_vae, case, expected):
    import re

    whole = os.path.join(folders["vae"], "hostile_tests", "tiny_vae.safetensors")
    name = {
        "header too small": lambda: write_vae(folders, "small.safetensors", b"\x01\x00\x00\x00"),
        "truncated": lambda: write_vae(folders, "cut.safetensors", open(whole, "rb").read()[:-1000]),
        "code in a pickle": lambda: write_vae(folders, "code.ckpt", pickle.dumps({"encoder.conv_in.weight": Code()}, protocol=2)),
        "truncated pickle": lambda: write_vae(folders, "eof.ckpt", pickle.dumps({"a": 1})[:-3]),
        "empty pickle": lambda: write_vae(folders, "empty.ckpt", b""),
        "not a vae": lambda: write_vae(folders, "unet.safetensors", state_dict={"model.diffusion_model.out.2.weight": torch.zeros(4, 32, 3, 3)}),
        "a million blocks": lambda: write_vae(folders, "deep.safetensors", state_dict={
            **image_vae, "encoder.down.0.block.999999.conv1.weight": torch.zeros(1)}),
        "nan": lambda: write_vae(folders, "nan.safetensors", state_dict={
            **image_vae, "decoder.conv_in.weight": image_vae["decoder.conv_in.weight"].clone().index_put_(
                (torch.tensor([0]),) * 4, torch.tensor(float("nan")))}),
    }[case]()
    message = refused(lambda: node_classes["VideoLDMLoadTemporalVAE"].execute(vae_name=name, temporal_decoder="none"))
    assert re.match(expected, message), message


def test_a_valid_vae_loads_and_an_addon_for_other_widths_is_refused_before_decoding(node_classes, folders, image_vae):
    vae = node_classes["VideoLDMLoadTemporalVAE"].execute(vae_name="vae/hostile_tests/tiny_vae.safetensors",
                                                          temporal_decoder="none").result[0]
    assert vae.latent_channels == 4
    spec, weights = hf.small_decoder()   # 32 channels after mid.block_1; the tiny VAE's middle is 64 wide
    hf.write_addon(os.path.join(folders["temporal_decoders"], "narrow.safetensors"), hf.spec_dict(spec), weights)
    message = refused(lambda: node_classes["VideoLDMLoadTemporalVAE"].execute(
        vae_name="vae/hostile_tests/tiny_vae.safetensors", temporal_decoder="narrow.safetensors"))
    assert message == ("'narrow.safetensors': its temporal layer after mid.block_1 has 32 channels, but the decoder of "
                       "'hostile_tests/tiny_vae.safetensors' has 64 channels there. Choose the add-on made for this VAE, "
                       "or 'none'.")


def test_load_temporal_vae_reads_only_a_checkpoints_first_stage(node_classes, folders, tiny_bundle_parts):
    """A checkpoint's UNet and text encoder are not the VAE: they are neither checked nor read (a
    NaN there does not stop the VAE), and a view repeating a few bytes there is still refused when
    the pickle is opened, before anything is read."""
    import folder_paths

    _, state_dict = tiny_bundle_parts
    checkpoints = folder_paths.get_folder_paths("checkpoints")[0]
    os.makedirs(os.path.join(checkpoints, "hostile_tests"), exist_ok=True)
    unet_key = next(k for k in state_dict if k.startswith("model.diffusion_model."))
    nan_unet = {k: v.contiguous() for k, v in state_dict.items()}
    nan_unet[unet_key] = torch.full_like(nan_unet[unet_key], float("nan"))
    save_file(nan_unet, os.path.join(checkpoints, "hostile_tests", "nan_unet.safetensors"))
    vae = node_classes["VideoLDMLoadTemporalVAE"].execute(vae_name="checkpoints/hostile_tests/nan_unet.safetensors",
                                                          temporal_decoder="none").result[0]
    assert all(torch.isfinite(v).all() for v in vae.first_stage_model.state_dict().values())
    torch.save(dict(nan_unet, **{unet_key: torch.zeros(1).expand(1 << 40)}),
               os.path.join(checkpoints, "hostile_tests", "views.ckpt"))
    message = refused(lambda: node_classes["VideoLDMLoadTemporalVAE"].execute(
        vae_name="checkpoints/hostile_tests/views.ckpt", temporal_decoder="none"))
    assert message.startswith(f"'hostile_tests/views.ckpt': tensor '{unet_key}' of shape (1099511627776,) declares")


def test_a_bundle_whose_vocabulary_contradicts_its_embedding_is_refused(node_classes, pack_module, folders, tiny_bundle_parts):
    spec, state_dict = tiny_bundle_parts
    data = json.loads(spec.to_json())
    data["text_encoder_config"]["vocab_size"] = 60_000
    pack_bundle = pack_module("videoldm_core.bundle")
    save_file({k: v.contiguous() for k, v in state_dict.items()}, os.path.join(folders["videoldm_bundles"], "vocab.safetensors"),
              metadata={pack_bundle.BUNDLE_METADATA_KEY: json.dumps(data)})
    message = refused(lambda: node_classes["VideoLDMLoadBundle"].execute(bundle_name="vocab.safetensors"))
    assert message == ("'vocab.safetensors': the spec states vocab_size x hidden_size = (60000, 64), but the file's "
                       "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight has the shape (49408, 64). "
                       "The spec contradicts its weights; the file is damaged or was edited.")

    state_dict = dict(state_dict)
    key = "model.diffusion_model.out.2.bias"
    state_dict[key] = torch.full_like(state_dict[key], float("inf"))
    save_file({k: v.contiguous() for k, v in state_dict.items()}, os.path.join(folders["videoldm_bundles"], "inf.safetensors"),
              metadata={pack_bundle.BUNDLE_METADATA_KEY: spec.to_json()})
    message = refused(lambda: node_classes["VideoLDMLoadBundle"].execute(bundle_name="inf.safetensors"), 256 * MIB)
    assert message.startswith(f"'inf.safetensors': tensor '{key}' holds 4 non-finite values")


VAE_FUZZ_CASES = 40


def test_mutated_vae_files_load_or_fail_with_the_packs_error(node_classes, folders, image_vae):
    """The loader fuzz (tests/unit/test_loader_fuzz.py) for Load Temporal VAE, whose checks need ComfyUI."""
    import random

    errors, findings = pack_errors(), []
    path = os.path.join(folders["vae"], "hostile_tests", "fuzzed.safetensors")
    for case in range(VAE_FUZZ_CASES):
        rng = random.Random(case)
        weights, what = hf.mutate_weights(rng, image_vae)
        save_file({k: v.contiguous() for k, v in weights.items()}, path)
        if rng.random() < 0.3:
            with open(path, "rb") as f:
                data, more = hf.mutate_bytes(rng, f.read())
            with open(path, "wb") as f:
                f.write(data)
            what += f"; {more}"
        try:
            node_classes["VideoLDMLoadTemporalVAE"].execute(vae_name="vae/hostile_tests/fuzzed.safetensors",
                                                            temporal_decoder="none")
        except errors:
            pass
        except Exception as e:
            findings.append(f"case {case} ({what}): raw {type(e).__name__}: {e}")
    assert not findings, "\n".join(findings)


def test_weights_beyond_the_range_of_the_devices_float16_are_refused_by_every_loader(node_classes, pack_module, folders,
                                                                                  image_vae, tiny_bundle_parts,
                                                                                  monkeypatch):
    """On a GPU the host keeps weights in float16: a float32 1e5 there becomes infinity. The CPU
    keeps float32, so the host's choice is made float16 here for the three loaders."""
    import comfy.model_management as mm

    monkeypatch.setattr(mm, "unet_dtype", lambda *args, **kwargs: torch.float16)
    monkeypatch.setattr(mm, "vae_dtype", lambda *args, **kwargs: torch.float16)
    spec, weights = hf.small_adapter()
    key = "input_blocks.1.1.time_stack.0.attn1.to_q.weight"
    weights[key][0, 0] = 1e5
    hf.write_adapter(os.path.join(folders["temporal_adapters"], "hostile_range.safetensors"), hf.spec_dict(spec), weights)
    message = refused(lambda: node_classes["VideoLDMLoadTemporalAdapter"].execute(adapter_name="hostile_range.safetensors"))
    assert message.startswith(f"'hostile_range.safetensors': tensor '{key}' holds 1 values beyond the range of float16")
    vae = dict(image_vae, **{"decoder.conv_in.bias": image_vae["decoder.conv_in.bias"].clone().fill_(-7e4)})
    name = write_vae(folders, "range.safetensors", state_dict=vae)
    message = refused(lambda: node_classes["VideoLDMLoadTemporalVAE"].execute(vae_name=name, temporal_decoder="none"))
    assert "'hostile_tests/range.safetensors': tensor 'decoder.conv_in.bias' holds" in message and "float16" in message
    bundle_spec, state_dict = tiny_bundle_parts
    unet_key = next(k for k in state_dict if k.startswith("model.diffusion_model.") and k.endswith(".bias"))
    bundle = {k: v.contiguous() for k, v in state_dict.items()}
    bundle[unet_key] = torch.full_like(bundle[unet_key], 1e6)
    with pytest.raises(pack_module("videoldm_core.bundle").BundleFormatError,
                       match=rf"^'range bundle': tensor '{unet_key}' holds"):
        pack_module("host.bundle").build_model(bundle_spec, bundle, source="'range bundle'")
