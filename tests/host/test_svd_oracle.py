"""SVD temporal-layer import against ComfyUI's own native SVD UNet path: the same random weights
in a video UNet (VideoResBlock, SpatialVideoTransformer, as ComfyUI builds it for SVD files) and
in a plain SD2.x UNet with the pack's imported adapter applied must give the same output."""


import torch

from devtools import unet_configs

TOLERANCE = 1e-5
FRAMES = 5


def video_config(base):
    # what ComfyUI's model detection sets for a UNet with time_stack keys (model_detection.py)
    return dict(base, extra_ff_mix_layer=True, use_spatial_context=True, merge_strategy="learned_with_images",
                merge_factor=0.0, video_kernel_size=[3, 1, 1], use_temporal_resblock=True, use_temporal_attention=True,
                disable_temporal_crossattention=False)


def test_imported_svd_temporal_layers_match_the_native_svd_unet(pack_module):
    import comfy.model_patcher
    import comfy.ops
    import comfy.supported_models as sm
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    base = unet_configs.tiny(unet_configs.SD21, width=64, context_dim=32, head_width=64)  # SVD's 64-wide heads
    native = UNetModel(**video_config(base), operations=comfy.ops.disable_weight_init).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for p in native.parameters():
            p.copy_(torch.randn_like(p) * 0.1)
    state_dict = {f"model.diffusion_model.{k}": v for k, v in native.state_dict().items()}

    model_config = sm.SD20(base)
    model_config.unet_config.update(num_heads=base["num_heads"], num_head_channels=base["num_head_channels"])
    model_config.set_inference_dtype(torch.float32, None)
    spatial = model_config.get_model({}, device="cpu")
    temporal_names = (".time_stack.", ".time_mixer.", ".time_pos_embed.")
    missing, unexpected = spatial.diffusion_model.load_state_dict(
        {k.removeprefix("model.diffusion_model."): v for k, v in state_dict.items() if not any(t in k for t in temporal_names)},
        strict=False)
    assert not missing and not unexpected
    model = comfy.model_patcher.ModelPatcher(spatial, "cpu", "cpu")

    importers, patch = pack_module("videoldm_core.importers"), pack_module("host.temporal_adapter")
    spec, weights = importers.import_adapter(state_dict, {}, "svd_xt.safetensors")
    assert (spec.family, spec.placement) == ("SD2.x", "videoldm")
    patched = patch.apply_adapter(model, patch.build_adapter_patcher(spec, weights, "svd"), "svd")

    torch.manual_seed(1)
    x, t = torch.randn(FRAMES, 4, 8, 8), torch.full((FRAMES,), 600.0)
    context = torch.randn(1, 7, 32).expand(FRAMES, -1, -1)
    with torch.no_grad():
        expected = native(x, t, context=context, num_video_frames=FRAMES, transformer_options={})
        options = dict(patched.model_options["transformer_options"], cond_or_uncond=[0])
        got = patched.model.diffusion_model(x, t, context=context, transformer_options=options)
        image_only = model.model.diffusion_model(x, t, context=context, transformer_options={})
    assert (got - expected).abs().max() < TOLERANCE
    assert (image_only - expected).abs().max() > 1000 * TOLERANCE, "the temporal layers made no difference"


def test_loading_svds_temporal_layers_says_they_are_not_run_as_trained(pack_module, tmp_path, caplog):
    """SVD trained them reading its own noise-level embedding, labels and image token; on SD2.x they
    read SD2.x's: Load Temporal Adapter says so, and loads them as the start for training they are."""
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    from safetensors.torch import save_file

    base = unet_configs.tiny(unet_configs.SD21, width=64, context_dim=32, head_width=64)
    with torch.device("meta"):
        shapes = UNetModel(**video_config(base), operations=comfy.ops.disable_weight_init).state_dict()
    # a whole SVD checkpoint: the UNet, spatial layers too, beside a first stage with temporal layers
    # of its own (which once sent the file to "this is a temporal VAE decoder") and the conditioner
    whole = {f"model.diffusion_model.{k}": torch.zeros(v.shape) for k, v in shapes.items()}
    whole.update({k: torch.zeros(1) for k in ("first_stage_model.decoder.conv_out.time_mix_conv.weight",
                                               "first_stage_model.decoder.up.0.block.0.time_stack.in_layers.0.weight",
                                               "first_stage_model.decoder.mid.block_1.mix_factor",
                                               "conditioner.embedders.0.open_clip.model.logit_scale")})
    save_file(whole, str(tmp_path / "svd.safetensors"))
    with caplog.at_level("WARNING", logger="videoldm"):
        loaded = pack_module("host.temporal_adapter").load_temporal_adapter(str(tmp_path / "svd.safetensors"), "svd.safetensors")
    assert loaded.spec.source == "svd"
    assert {k: v.shape for k, v in loaded.patcher.model.state_dict().items()} == {
        k.removeprefix("model.diffusion_model."): v.shape for k, v in whole.items()
        if any(t in k for t in (".time_stack.", ".time_mixer.", ".time_pos_embed.")) and k.startswith("model.")}
    assert "'svd.safetensors' holds SVD's temporal layers" in caplog.text and "not as SVD trained them" in caplog.text
    caplog.clear()   # saved in the pack's format (e.g. after training from them): no longer SVD's own layers
    pack_module("videoldm_core.temporal_adapter").save_adapter(tmp_path / "trained.safetensors", loaded.patcher.model,
                                                               loaded.spec)
    with caplog.at_level("WARNING", logger="videoldm"):
        pack_module("host.temporal_adapter").load_temporal_adapter(str(tmp_path / "trained.safetensors"), "trained.safetensors")
    assert "SVD's temporal layers" not in caplog.text
