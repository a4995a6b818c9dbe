"""Load Video LDM Bundle builds ComfyUI's own model, CLIP and VAE classes from a bundle."""

import os

import pytest
import torch
from safetensors.torch import load_file, save_file
from devtools import tiny_bundles


@pytest.fixture(scope="session")
def tiny_bundle(pack, pack_module):
    import folder_paths

    spec = tiny_bundles.tiny_sd1_spec()
    state_dict = tiny_bundles.random_bundle_state_dict(spec, seed=1)
    path = os.path.join(folder_paths.get_folder_paths("checkpoints")[0], "tiny_host.safetensors")
    pack_module("videoldm_core.bundle").save_bundle(path, spec, state_dict)
    return path


def load(node_classes, name):
    return node_classes["VideoLDMLoadBundle"].execute(bundle_name=name).result


def test_bundle_loads_as_core_model_clip_and_vae(node_classes, tiny_bundle):
    import comfy.ldm.modules.diffusionmodules.openaimodel as openaimodel
    import comfy.model_base
    import comfy.model_patcher

    model, clip, vae = load(node_classes, "tiny_host.safetensors")
    assert isinstance(model, comfy.model_patcher.ModelPatcher)
    assert type(model.model) is comfy.model_base.BaseModel
    assert type(model.model.diffusion_model) is openaimodel.UNetModel
    assert model.model.diffusion_model.model_channels == 32
    on_disk = load_file(tiny_bundle)
    key = "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
    assert torch.equal(model.model.diffusion_model.state_dict()[key].float(), on_disk["model.diffusion_model." + key])

    cond = clip.encode_from_tokens_scheduled(clip.tokenize("a red square"))
    assert cond[0][0].shape == (1, 77, 64)

    with torch.inference_mode():
        images = vae.decode(torch.randn(2, 4, 4, 4))
    assert images.shape == (2, 32, 32, 3)
    assert 0.0 <= float(images.min()) and float(images.max()) <= 1.0


def test_sampling_is_deterministic_and_follows_the_prompt(node_classes, tiny_bundle):
    import comfy.sample

    model, clip, _ = load(node_classes, "tiny_host.safetensors")
    latent = torch.zeros(4, 4, 8, 8)
    noise = comfy.sample.prepare_noise(latent, 7)

    def sample(text):
        positive = clip.encode_from_tokens_scheduled(clip.tokenize(text))
        negative = clip.encode_from_tokens_scheduled(clip.tokenize(""))
        return comfy.sample.sample(model, noise, 3, 3.0, "euler", "normal", positive, negative, latent,
                                   disable_pbar=True, seed=7)

    first, again, other = sample("a red square"), sample("a red square"), sample("a blue circle")
    assert first.shape == (4, 4, 8, 8) and torch.isfinite(first).all()
    assert torch.equal(first, again)
    assert (first - other).abs().max() > 1e-3


def test_non_bundle_is_rejected_before_its_weights_are_read(node_classes, pack_module, tiny_bundle, monkeypatch):
    plain = os.path.join(os.path.dirname(tiny_bundle), "plain_sd.safetensors")
    save_file({"model.diffusion_model.out.2.weight": torch.zeros(4, 32, 3, 3)}, plain)

    def must_not_load(*args, **kwargs):
        raise AssertionError("weights were read before the bundle check")

    # the loader reads every tensor through WeightsFile.tensors (never core's load_torch_file)
    monkeypatch.setattr(pack_module("videoldm_core.weights_file").WeightsFile, "tensors", must_not_load)
    with pytest.raises(pack_module("videoldm_core.bundle").BundleFormatError, match="not a Video LDM bundle"):
        load(node_classes, "plain_sd.safetensors")


def test_weights_that_disagree_with_the_spec_are_rejected_by_name(node_classes, pack_module, tiny_bundle):
    bundle = pack_module("videoldm_core.bundle")
    spec = bundle.read_bundle_spec(tiny_bundle)
    state_dict = load_file(tiny_bundle)
    dropped = "model.diffusion_model.middle_block.1.proj_out.weight"
    del state_dict[dropped]
    bundle.save_bundle(os.path.join(os.path.dirname(tiny_bundle), "incomplete.safetensors"), spec, state_dict)
    with pytest.raises(bundle.BundleFormatError, match=r"UNet weights do not match .*1 missing \(e.g. \['middle_block.1.proj_out.weight'\]\)"):
        load(node_classes, "incomplete.safetensors")


def test_missing_file_names_the_folder(node_classes, tiny_bundle):
    with pytest.raises(FileNotFoundError, match="checkpoints"):
        load(node_classes, "does_not_exist.safetensors")


def test_an_x4_upscaler_bundle_loads_with_its_4x_vae_and_stated_scale(node_classes, pack_module):
    """Family SD-x4-upscaler: ComfyUI's SD_X4Upscaler (v prediction as stated), a 4x VAE that core
    VAE Decode and the pack's Load Temporal VAE both treat as 4x, and a stated latent scale factor."""
    import dataclasses

    import comfy.model_base
    import comfy.model_sampling
    import folder_paths

    bundle = pack_module("videoldm_core.bundle")
    spec = tiny_bundles.tiny_x4_spec()
    spec = dataclasses.replace(spec, vae_config={**spec.vae_config, "scale_factor": 0.5})
    path = os.path.join(folder_paths.get_folder_paths("checkpoints")[0], "tiny_x4_host.safetensors")
    bundle.save_bundle(path, spec, tiny_bundles.random_bundle_state_dict(spec, seed=2))
    model, clip, vae = load(node_classes, "tiny_x4_host.safetensors")
    assert type(model.model) is comfy.model_base.SD_X4Upscaler
    assert isinstance(model.model.model_sampling, comfy.model_sampling.V_PREDICTION)
    assert model.model.latent_format.scale_factor == 0.5
    assert vae.downscale_ratio == vae.upscale_ratio == 4
    z = torch.randn(3, 4, 8, 8)
    with torch.inference_mode():
        core = vae.decode(z)
        temporal_vae = pack_module("host.temporal_decoder")
        ours_vae = node_classes["VideoLDMLoadTemporalVAE"].execute(vae_name="checkpoints/tiny_x4_host.safetensors", temporal_decoder="none").result[0]
        ours = temporal_vae.decode_video(ours_vae, z, 8, 2)
    assert core.shape == ours.shape == (3, 32, 32, 3)
    assert (core - ours).abs().max() < 1e-4


def _damaged_bundle(pack_module, tiny_bundle, name, key, value):
    bundle = pack_module("videoldm_core.bundle")
    state_dict = load_file(tiny_bundle)
    state_dict[key] = state_dict[key].clone()
    state_dict[key].view(-1)[0] = value
    path = os.path.join(os.path.dirname(tiny_bundle), name)
    bundle.save_bundle(path, bundle.read_bundle_spec(tiny_bundle), state_dict)
    return path


def test_text_encoder_and_vae_weights_beyond_their_float16_are_refused(node_classes, pack_module, tiny_bundle,
                                                                      monkeypatch):
    """ComfyUI keeps the text encoder in float16 even on CPU: a weight of 1e6, finite in the file,
    made every cond infinite without a word (only the UNet's range was checked). The VAE likewise
    where the host keeps it in float16 (made so here: the CPU keeps it in float32)."""
    key = "cond_stage_model.transformer.text_model.final_layer_norm.weight"
    _damaged_bundle(pack_module, tiny_bundle, "clip_beyond_fp16.safetensors", key, 1e6)
    _, clip, _ = load(node_classes, os.path.basename(tiny_bundle))
    assert clip.cond_stage_model.clip_l.transformer.text_model.final_layer_norm.weight.dtype == torch.float16
    with pytest.raises(pack_module("videoldm_core.bundle").BundleFormatError,
                       match=rf"^'clip_beyond_fp16.safetensors': tensor '{key}' "
                             r"holds 1 values beyond the range of float16"):
        load(node_classes, "clip_beyond_fp16.safetensors")
    import comfy.model_management as mm

    key = "first_stage_model.decoder.conv_in.bias"
    _damaged_bundle(pack_module, tiny_bundle, "vae_beyond_fp16.safetensors", key, -7e4)
    load(node_classes, "vae_beyond_fp16.safetensors")   # float32 on this CPU: it fits
    monkeypatch.setattr(mm, "vae_dtype", lambda *args, **kwargs: torch.float16)
    with pytest.raises(pack_module("videoldm_core.bundle").BundleFormatError,
                       match=rf"^'vae_beyond_fp16.safetensors': tensor '{key}' holds 1 values beyond the range of float16"):
        load(node_classes, "vae_beyond_fp16.safetensors")


def test_the_training_cli_checks_a_bundle_as_the_loader_node_does(pack_module, tiny_bundle):
    """train.py read bundles with the header spec only: a NaN weight loaded into the UNet, and a
    spec contradicting its weights was found only when building."""
    cli = pack_module("host.training_cli")
    bundle = pack_module("videoldm_core.bundle")
    nan = _damaged_bundle(pack_module, tiny_bundle, "nan_for_cli.safetensors", "model.diffusion_model.out.2.weight",
                          float("nan"))
    with pytest.raises(bundle.BundleFormatError, match=r"^'nan_for_cli.safetensors': tensor "
                                                       r"'model.diffusion_model.out.2.weight' holds 1 non-finite values"):
        cli.load_checkpoint(nan)
    state_dict = load_file(tiny_bundle)
    del state_dict["model.diffusion_model.middle_block.1.proj_out.weight"]
    incomplete = os.path.join(os.path.dirname(tiny_bundle), "incomplete_for_cli.safetensors")
    bundle.save_bundle(incomplete, bundle.read_bundle_spec(tiny_bundle), state_dict)
    with pytest.raises(bundle.BundleFormatError, match=r"UNet weights do not match .*1 missing"):
        cli.load_checkpoint(incomplete)
    model, _, _ = cli.load_checkpoint(tiny_bundle, "fp32")
    assert model.model.diffusion_model.out[2].weight.dtype == torch.float32


def test_unet_weights_beyond_the_float16_they_are_kept_in_are_refused_by_their_file_key(pack_module, tiny_bundle):
    """As a float or as an integer tensor: an int32 100000 in a weight slot became float16 infinity."""
    bundle, host = pack_module("videoldm_core.bundle"), pack_module("host.bundle")
    spec, state_dict = bundle.read_bundle_spec(tiny_bundle), load_file(tiny_bundle)
    key = "model.diffusion_model.out.2.bias"
    for value in (torch.full_like(state_dict[key], 1e5), torch.full(state_dict[key].shape, 100000, dtype=torch.int32)):
        with pytest.raises(bundle.BundleFormatError, match=rf"^'b': tensor '{key}' holds 4 values beyond the range of float16"):
            host.build_components(spec, {**state_dict, key: value}, source="'b'", unet_dtype=torch.float16)
