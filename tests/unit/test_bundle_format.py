"""The bundle file format (videoldm_core.bundle): round trip and clear errors."""

import json
import re

import pytest
import torch
from safetensors.torch import save_file

from videoldm_core.bundle import (BUNDLE_METADATA_KEY, BundleFormatError, BundleSpec, read_bundle_spec,
                                  save_bundle, split_components)


def small_spec(**overrides) -> BundleSpec:
    fields = dict(
        family="SD1.x", prediction="eps",
        unet_config={"in_channels": 4, "out_channels": 4, "model_channels": 32, "channel_mult": [1],
                     "num_res_blocks": [1], "context_dim": 8, "transformer_depth": [1]},
        vae_config={"embed_dim": 4, "ddconfig": {"z_channels": 4, "ch_mult": [1, 2, 2, 2]}},
        text_encoder_config={"hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2, "vocab_size": 10},
    )
    fields.update(overrides)
    return BundleSpec(**fields)


def small_state_dict():
    return {"model.diffusion_model.out.2.weight": torch.randn(4, 32, 3, 3),
            "first_stage_model.decoder.conv_in.weight": torch.randn(8, 4, 3, 3),
            "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": torch.randn(10, 8)}


def test_spec_and_weights_round_trip_exactly(tmp_path):
    spec, sd = small_spec(description="x"), small_state_dict()
    path = tmp_path / "b.safetensors"
    save_bundle(path, spec, sd)
    assert read_bundle_spec(path) == spec
    from safetensors.torch import load_file
    loaded = load_file(str(path))
    assert set(loaded) == set(sd) and all(torch.equal(loaded[k], sd[k]) for k in sd)


def test_spec_derives_latent_geometry():
    spec = small_spec()
    assert spec.latent_channels == 4
    assert spec.vae_scale_factor == 8


def test_file_without_bundle_metadata_names_the_core_loader(tmp_path):
    path = tmp_path / "plain.safetensors"
    save_file(small_state_dict(), str(path))
    with pytest.raises(BundleFormatError, match="not a Video LDM bundle.*Load Checkpoint"):
        read_bundle_spec(path)


def test_non_safetensors_file_is_rejected_by_extension(tmp_path):
    path = tmp_path / "model.ckpt"
    path.write_bytes(b"\x80\x04pickle")
    with pytest.raises(BundleFormatError, match=r"expected a \.safetensors bundle, found a '\.ckpt' file"):
        read_bundle_spec(path)


def test_corrupt_safetensors_header_is_a_clear_error(tmp_path):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(BundleFormatError, match=r"^'broken.safetensors': not a readable weights file \(safetensors: "):
        read_bundle_spec(path)


@pytest.mark.parametrize("change, message", [
    ({"family": "SDXL"}, r"family one of \('SD1.x', 'SD-x4-upscaler'\), found 'SDXL'"),
    ({"prediction": "x0"}, r"prediction one of \('eps', 'v'\), found 'x0'"),
    ({"version": 99}, r"format version 1..1 .*found 99"),
    ({"unet_config": {"in_channels": 4}}, r"unet_config to define .* missing \['out_channels'"),
    ({"description": ["a", "list"]}, r"description to be text, found list"),
    ({"extra": "text"}, r"extra to be an object, found str"),
])
def test_invalid_spec_fields_say_what_was_expected(change, message):
    with pytest.raises(BundleFormatError, match=message):
        small_spec(**change)


def test_unet_input_channels_must_fit_the_family():
    with pytest.raises(BundleFormatError, match=r"in_channels = 4 latent channels \+ 3 low-res image channels, found 4"):
        small_spec(family="SD-x4-upscaler")
    unet = dict(small_spec().unet_config, in_channels=7)
    assert small_spec(family="SD-x4-upscaler", unet_config=unet).family == "SD-x4-upscaler"
    with pytest.raises(BundleFormatError, match=r"in_channels = 4 latent channels, found 7"):
        small_spec(unet_config=unet)


@pytest.mark.parametrize("scale", [-1, 0, 1e-300, 1e300, True])
def test_scale_factor_is_optional_and_keeps_latents_finite(scale):
    """1e-300 or 1e300 pass as positive numbers but make every latent infinite one way or the other;
    JSON true is no number."""
    assert small_spec().latent_scale_factor is None
    vae = dict(small_spec().vae_config, scale_factor=0.5)
    assert small_spec(vae_config=vae).latent_scale_factor == 0.5
    with pytest.raises(BundleFormatError, match=r"scale_factor a number from 0.0001 to 10000 .*found " + re.escape(repr(scale))):
        small_spec(vae_config=dict(vae, scale_factor=scale))


@pytest.mark.parametrize("change, message", [
    ({"device": "cpu"}, r"unet_config keys from the SD families' UNet architecture, found \['device'\]"),
    ({"dtype": "float16", "operations": 1}, r"found \['dtype', 'operations'\]"),
    ({"num_classes": 1000}, r"found \['num_classes'\]"),
    ({"adm_in_channels": 2816}, r"unet_config.adm_in_channels = None \(no SD1.x UNet has one\), found 2816"),
    ({"use_temporal_attention": True}, r"unet_config.use_temporal_attention = False .*found True"),
])
def test_unet_config_states_architecture_only(change, message):
    """A 'device' key used to reach UNetModel and build the meta-device check on the CPU; a class
    label built a model that failed at the first step with an assertion naming no file."""
    with pytest.raises(BundleFormatError, match=message):
        small_spec(unet_config=dict(small_spec().unet_config, **change))
    assert small_spec(unet_config=dict(small_spec().unet_config, adm_in_channels=None, use_temporal_attention=False))


def test_latent_channels_are_the_family_latent_formats():
    """8 latent channels passed the spec, but ComfyUI's VAE and latent format stayed at 4: tiled
    encoding and sampling failed with shape errors that named no file."""
    vae = {"embed_dim": 8, "ddconfig": {"z_channels": 8, "ch_mult": [1, 2, 2, 2]}}
    unet = dict(small_spec().unet_config, in_channels=8, out_channels=8)
    with pytest.raises(BundleFormatError, match=r"z_channels = 4 \(the latent format of the SD1.x family\), found 8"):
        small_spec(vae_config=vae, unet_config=unet)
    with pytest.raises(BundleFormatError, match=r"vae_config.ddconfig to define \['z_channels', 'ch_mult'\], found missing \['z_channels'\]"):
        small_spec(vae_config={"embed_dim": 4, "ddconfig": {"ch_mult": [1, 2]}})


def test_a_file_is_a_bundle_by_its_metadata_key(tmp_path):
    """The training CLI loads a bundle as a bundle even when its spec is broken (refused as one),
    and anything else as a checkpoint."""
    from videoldm_core.bundle import holds_bundle

    save_bundle(tmp_path / "b.safetensors", small_spec(), small_state_dict())
    save_file(small_state_dict(), str(tmp_path / "plain.safetensors"), {BUNDLE_METADATA_KEY: "{broken"})
    save_file(small_state_dict(), str(tmp_path / "other.safetensors"))
    (tmp_path / "model.ckpt").write_bytes(b"\x80\x04pickle")
    assert holds_bundle(tmp_path / "b.safetensors") and holds_bundle(tmp_path / "plain.safetensors")
    assert not holds_bundle(tmp_path / "other.safetensors") and not holds_bundle(tmp_path / "model.ckpt")


def test_context_dim_must_match_text_encoder_width():
    unet = dict(small_spec().unet_config, context_dim=768)
    with pytest.raises(BundleFormatError, match="context_dim equal to text_encoder_config.hidden_size.*768 vs 8"):
        small_spec(unet_config=unet)


def test_metadata_errors_name_the_file(tmp_path):
    path = tmp_path / "odd.safetensors"
    save_file(small_state_dict(), str(path), metadata={BUNDLE_METADATA_KEY: "{oops"})
    with pytest.raises(BundleFormatError, match="'odd.safetensors': 'videoldm_bundle' metadata is not valid JSON"):
        read_bundle_spec(path)
    save_file(small_state_dict(), str(path), metadata={BUNDLE_METADATA_KEY: '{"version": ' + "1" * 5000 + "}"})
    with pytest.raises(BundleFormatError, match="'odd.safetensors': 'videoldm_bundle' metadata is not valid JSON "
                                                r"\(Exceeds the limit"):   # an int past Python's digits: ValueError
        read_bundle_spec(path)
    data = json.loads(small_spec().to_json()) | {"surprise": 1}
    save_file(small_state_dict(), str(path), metadata={BUNDLE_METADATA_KEY: json.dumps(data)})
    with pytest.raises(BundleFormatError, match=r"unknown fields \['surprise'\] in 'videoldm_bundle'"):
        read_bundle_spec(path)


def test_split_requires_every_component_and_no_stray_keys():
    sd = small_state_dict()
    parts = split_components(sd)
    assert {k: len(v) for k, v in parts.items()} == {"unet": 1, "vae": 1, "text_encoder": 1}
    with pytest.raises(BundleFormatError, match=r"found none for \['vae'\]"):
        split_components({k: v for k, v in sd.items() if not k.startswith("first_stage_model.")})
    with pytest.raises(BundleFormatError, match="keys outside"):
        split_components({**sd, "lora.weight": torch.zeros(1)})


def test_save_refuses_an_incomplete_bundle(tmp_path):
    sd = {k: v for k, v in small_state_dict().items() if not k.startswith("cond_stage_model.")}
    with pytest.raises(BundleFormatError, match="text_encoder"):
        save_bundle(tmp_path / "x.safetensors", small_spec(), sd)
    assert not (tmp_path / "x.safetensors").exists()
