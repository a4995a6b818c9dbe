"""Applying temporal adapters to ComfyUI models: the original stays untouched, frames are the
batch (T read per call), core samplers, CFG, context windows and LoRA patches work unchanged."""

import logging

import pytest
import torch
from devtools import tiny_bundles

FRAMES = 4


@pytest.fixture(scope="module")
def tools(pack_module, tiny_sd1):
    patch = pack_module("host.temporal_adapter")
    layout = pack_module("host.unet_layout")
    adapter_mod = pack_module("videoldm_core.temporal_adapter")
    placement = pack_module("videoldm_core.placement")
    model, clip, _ = tiny_sd1

    def make_adapter(kind="videoldm", seed=0, **kw):
        spatial = layout.spatial_layout(model.model.diffusion_model)
        slots = getattr(placement, f"{kind}_slots")(spatial, **kw)
        spec = adapter_mod.AdapterSpec("SD1.x", kind, slots, max_frames=kw.get("max_len"))
        fresh = adapter_mod.TemporalAdapter(spec)
        torch.manual_seed(seed)
        for p in fresh.parameters():
            torch.nn.init.normal_(p, std=0.05)
        return patch.build_adapter_patcher(spec, fresh.state_dict(), source="test")

    positive = clip.encode_from_tokens_scheduled(clip.tokenize("a red square moving left"))
    negative = clip.encode_from_tokens_scheduled(clip.tokenize(""))
    return patch, make_adapter, positive, negative


def sample(model, tools, frames=FRAMES, cfg=1.0, steps=2, seed=3):
    import comfy.sample

    _, _, positive, negative = tools
    latent = torch.zeros(frames, 4, 8, 8)
    noise = comfy.sample.prepare_noise(latent, seed)
    with torch.inference_mode():
        return comfy.sample.sample(model, noise, steps, cfg, "euler", "normal", positive, negative, latent,
                                   disable_pbar=True, seed=seed)


def record_num_frames(adapter_patcher, path):
    seen = []
    handle = adapter_patcher.model.slot(path).register_forward_hook(lambda m, args, out: seen.append(args[2]))
    return seen, handle


def test_original_model_untouched_after_patched_clone_sampled(tiny_sd1, tools):
    patch, make_adapter, *_ = tools
    model = tiny_sd1[0]
    before = sample(model, tools)
    patched = patch.apply_adapter(model, make_adapter(), "random")
    video = sample(patched, tools)
    after = sample(model, tools)
    assert torch.equal(before, after)
    assert (video - before).abs().max() > 1e-3, "the adapter changed nothing"
    assert "patches" not in model.model_options["transformer_options"]


@pytest.mark.parametrize("kind", ["videoldm", "animatediff"])
def test_temporal_attention_is_called_as_cores_spatial_attention(tiny_sd1, tools, kind):
    """Through an attention override another node set on the model (transformer_options, as core's
    spatial layers honour it) and at the model's own attention precision (SD2.x keeps float32)."""
    patch, make_adapter, *_ = tools
    model = tiny_sd1[0].clone()
    calls = []

    def override(func, q, k, v, heads, *args, **kwargs):
        calls.append((q.shape[1], kwargs.get("attn_precision")))
        return func(q, k, v, heads, *args, **kwargs)

    model.model_options["transformer_options"]["optimized_attention_override"] = override
    plain = sample(patch.apply_adapter(tiny_sd1[0], make_adapter(kind), "a"), tools, frames=5)
    patched = patch.apply_adapter(model, make_adapter(kind), "a")
    assert torch.equal(sample(patched, tools, frames=5), plain)   # the override passes every call on unchanged
    temporal = [precision for tokens, precision in calls if tokens == 5]   # over the frames: no spatial level has 5
    assert temporal and all(p is None for p in temporal)   # SD1.x's attention keeps the compute dtype
    model.model.model_config.unet_config["attn_precision"] = torch.float32   # as core's SD2.x config
    try:
        calls.clear()
        sample(patch.apply_adapter(model, make_adapter(kind), "a"), tools, frames=5)
    finally:
        del model.model.model_config.unet_config["attn_precision"]
    assert {precision for tokens, precision in calls if tokens == 5} == {torch.float32}


def test_an_fp8_unet_samples_with_the_adapter_in_its_compute_dtype(pack_module, tools):
    """A UNet stored in float8 (core's weight_dtype fp8_e4m3fn, --fp8_e4m3fn-unet) computes in its
    manual-cast dtype; the adapter's layers compute in it too, their own weights not rounded to 8
    bits: the same as the float32 UNet holding the fp8-rounded weights."""
    patch, make_adapter, *_ = tools
    bundle_host, spec = pack_module("host.bundle"), tiny_bundles.tiny_sd1_spec()
    weights = tiny_bundles.random_bundle_state_dict(spec, seed=5)
    fp8 = bundle_host.build_components(spec, weights, source="fp8", unet_dtype=torch.float8_e4m3fn)[0]
    assert fp8.model.get_dtype() == torch.float8_e4m3fn and fp8.model.manual_cast_dtype == torch.float32
    rounded = {k: v.to(torch.float8_e4m3fn).to(v.dtype) if k.startswith("model.diffusion_model.") else v
               for k, v in weights.items()}
    reference = bundle_host.build_components(spec, rounded, source="rounded", unet_dtype=torch.float32)[0]
    adapter = make_adapter()
    video = sample(patch.apply_adapter(fp8, adapter, "x"), tools)
    torch.testing.assert_close(video, sample(patch.apply_adapter(reference, adapter, "x"), tools), atol=1e-4, rtol=1e-4)
    assert (video - sample(fp8, tools)).abs().max() > 1e-3   # the temporal layers ran


def test_with_the_fp8_unet_flag_the_adapter_is_kept_in_the_unets_compute_dtype(pack_module, tools, monkeypatch):
    """--fp8_e4m3fn-unet makes core's unet_dtype answer float8 whatever the model: an adapter built
    then is kept in the dtype an fp8 UNet computes in (float32 on this CPU), not in 8 bits (its
    sigmoid and norms have no float8 kernels), and samples as the adapter built without the flag."""
    import comfy.cli_args

    patch, make_adapter, *_ = tools
    bundle_host, spec = pack_module("host.bundle"), tiny_bundles.tiny_sd1_spec()
    fp8 = bundle_host.build_components(spec, tiny_bundles.random_bundle_state_dict(spec, seed=5), source="fp8",
                                       unet_dtype=torch.float8_e4m3fn)[0]
    plain = make_adapter()
    monkeypatch.setattr(comfy.cli_args.args, "fp8_e4m3fn_unet", True)
    flagged = make_adapter()
    assert {p.dtype for p in flagged.model.parameters()} == {torch.float32}
    assert torch.equal(sample(patch.apply_adapter(fp8, flagged, "x"), tools), sample(patch.apply_adapter(fp8, plain, "x"), tools))


def test_strength_zero_is_the_image_model_bit_for_bit(tiny_sd1, tools):
    patch, make_adapter, *_ = tools
    model = tiny_sd1[0]
    assert torch.equal(sample(patch.apply_adapter(model, make_adapter(), "x", strength=0.0), tools), sample(model, tools))


def test_strength_scales_the_temporal_change(tiny_sd1, tools):
    patch, make_adapter, *_ = tools
    model, adapter = tiny_sd1[0], make_adapter()
    plain = sample(model, tools, steps=1)
    half = sample(patch.apply_adapter(model, adapter, "x", strength=0.5), tools, steps=1)
    full = sample(patch.apply_adapter(model, adapter, "x", strength=1.0), tools, steps=1)
    assert 0 < (half - plain).abs().mean() < (full - plain).abs().mean()


def test_strength_above_one_amplifies_the_temporal_change(tiny_sd1, tools):
    """The strength widget goes to 2: each temporal layer's change is doubled, x + 2 (temporal(x) - x),
    not capped at the trained layer output (strength 2 sampled as strength 1). A temporal ResBlock's
    call recorded while sampling: at strength 2 the layer gives exactly x + 2 (slot(x) - x); and the
    sampled video moves further from the image model than at strength 1."""
    patch, make_adapter, *_ = tools
    model, adapter = tiny_sd1[0], make_adapter()
    plain = sample(model, tools, steps=1)
    full = sample(patch.apply_adapter(model, adapter, "x", strength=1.0), tools, steps=1)
    doubled = patch.apply_adapter(model, adapter, "x", strength=2.0)
    applied = patch.applied_adapters(doubled)[0]
    slot_path = next(s for paths in applied.after.values() for s in paths
                     if applied.adapter.spec.slots[s]["kind"] == "resblock")
    calls = []
    handle = applied.adapter.slot(slot_path).register_forward_hook(lambda m, args, out: calls.append((args, out)))
    try:
        two = sample(doubled, tools, steps=1)
    finally:
        handle.remove()
    assert (two - full).abs().max() > 1e-3
    assert (full - plain).abs().mean() < (two - plain).abs().mean()
    (x, emb, num_frames, image_only_indicator), out = calls[0]
    assert (out - x).abs().max() > 1e-3
    with torch.inference_mode():
        layer = applied.run_after(slot_path, x, emb, num_frames, image_only_indicator)
    torch.testing.assert_close(layer, x + 2 * (out - x), atol=1e-6, rtol=1e-6)


def test_frames_are_read_per_call_with_cfg_batching(tiny_sd1, tools):
    patch, make_adapter, *_ = tools
    adapter = make_adapter()
    seen, handle = record_num_frames(adapter, "input_blocks.1.0")
    try:
        patched = patch.apply_adapter(tiny_sd1[0], adapter, "x")
        sample(patched, tools, cfg=3.0, steps=1)
    finally:
        handle.remove()
    assert seen == [FRAMES]  # the batch held 2 x 4 frames (cond and uncond)


def test_context_windows_reach_the_adapter_with_variable_frame_counts(tiny_sd1, tools):
    from comfy_extras.nodes_context_windows import ContextWindowsManualNode

    patch, make_adapter, *_ = tools
    adapter = make_adapter()
    seen, handle = record_num_frames(adapter, "input_blocks.1.0")
    try:
        patched = patch.apply_adapter(tiny_sd1[0], adapter, "x")
        windowed = ContextWindowsManualNode.execute(patched, context_length=4, context_overlap=1, context_schedule="standard_static",
                                                    context_stride=1, closed_loop=False, fuse_method="pyramid", dim=0, freenoise=False).result[0]
        out = sample(windowed, tools, frames=10, steps=1)
    finally:
        handle.remove()
    assert out.shape[0] == 10 and torch.isfinite(out).all()
    assert 4 in seen and 5 in seen  # windows of 4, and of 5 with the anchor frame core prepends


def test_transformer_index_stays_correct_for_other_patches(tiny_sd1, tools):
    patch, make_adapter, *_ = tools
    patched = patch.apply_adapter(tiny_sd1[0], make_adapter(), "x")
    indices = []

    def spy(q, context, value, extra_options):
        indices.append(extra_options["transformer_index"])
        return q, context, value

    patched.set_model_attn2_patch(spy)
    sample(patched, tools, steps=1)
    assert indices == list(range(16))  # every spatial transformer of the SD1.5 layout, in order


def test_two_adapters_stack_and_register_one_handler_each_kind(tiny_sd1, tools):
    patch, make_adapter, *_ = tools
    first, second = make_adapter(seed=1), make_adapter("animatediff", seed=2, max_len=16)
    seen_first, h1 = record_num_frames(first, "input_blocks.1.0")
    seen_second = []
    h2 = second.model.slot("input_blocks.1").register_forward_hook(lambda m, a, o: seen_second.append(a[1]))
    try:
        both = patch.apply_adapter(patch.apply_adapter(tiny_sd1[0], first, "a"), second, "b")
        sample(both, tools, steps=1)
    finally:
        h1.remove(), h2.remove()
    assert seen_first == [FRAMES] and seen_second == [FRAMES]
    assert len(both.model_options["transformer_options"]["patches"]["forward_timestep_embed_patch"]) == 2
    assert len(both.get_additional_models()) == 2


def test_lora_patches_on_the_base_model_still_apply(tiny_sd1, tools):
    patch, make_adapter, *_ = tools
    patched = patch.apply_adapter(tiny_sd1[0], make_adapter(), "x")
    with_lora = patched.clone()
    key = "diffusion_model.input_blocks.1.1.proj_in.weight"
    with_lora.add_patches({key: (torch.full_like(patched.get_model_object(key), 0.05),)}, strength_patch=1.0)
    assert (sample(with_lora, tools, steps=1) - sample(patched, tools, steps=1)).abs().max() > 1e-4


def test_more_frames_than_the_positional_table_stops_before_the_first_step(tiny_sd1, tools, pack_module):
    FrameLimitError = pack_module("videoldm_core.positional").FrameLimitError

    patch, make_adapter, *_ = tools
    adapter = make_adapter("animatediff", max_len=4)
    calls, handle = record_num_frames(adapter, "input_blocks.1")
    try:
        with pytest.raises(FrameLimitError, match=r"temporal adapter 'mm' encodes at most 4 frames .* 6 frames"):
            sample(patch.apply_adapter(tiny_sd1[0], adapter, "mm"), tools, frames=6)
    finally:
        handle.remove()
    assert calls == []


def test_one_frame_warns_and_runs_as_the_image_model(tiny_sd1, tools, caplog):
    patch, make_adapter, *_ = tools
    with caplog.at_level(logging.WARNING, logger="videoldm"):
        out = sample(patch.apply_adapter(tiny_sd1[0], make_adapter(), "x"), tools, frames=1)
    assert "temporal layers need at least 2 frames" in caplog.text
    assert torch.equal(out, sample(tiny_sd1[0], tools, frames=1))


@pytest.mark.parametrize("config_name, family", [("SD20", "SD2.x"), ("SDXL", "SDXL"), ("SD_X4Upscaler", "SD-x4-upscaler")])
def test_sd1_adapter_on_another_family_names_both(tools, config_name, family, pack_module):
    import comfy.model_patcher
    import comfy.supported_models as sm
    from devtools import unet_configs

    AdapterCompatibilityError = pack_module("videoldm_core.temporal_adapter").AdapterCompatibilityError

    patch, make_adapter, *_ = tools
    config = {"SD20": unet_configs.tiny(unet_configs.SD21), "SDXL": unet_configs.tiny(unet_configs.SDXL),
              "SD_X4Upscaler": dict(unet_configs.tiny(unet_configs.SD21), in_channels=7, num_classes=1000,
                                    disable_self_attentions=[True, True, True, False])}[config_name]
    model_config = getattr(sm, config_name)(config)
    model_config.set_inference_dtype(torch.float32, None)
    other = comfy.model_patcher.ModelPatcher(model_config.get_model({}, device="meta"), "cpu", "cpu")
    with pytest.raises(AdapterCompatibilityError, match=rf"made for SD1.x .* but the model is {family}"):
        patch.apply_adapter(other, make_adapter(), "sd1_adapter")


def test_a_model_that_is_not_a_unet_is_refused_by_name(tools, tiny_sd1, pack_module):
    """A DiT MODEL (Flux here) has no UNet blocks: applying an adapter, or making a fresh one to
    train, names it instead of failing on a missing attribute."""
    import comfy.model_patcher
    import comfy.supported_models as sm

    AdapterCompatibilityError = pack_module("videoldm_core.temporal_adapter").AdapterCompatibilityError
    patch, make_adapter, *_ = tools
    config = sm.Flux(dict(image_model="flux", in_channels=16, patch_size=2, out_channels=16, vec_in_dim=32,
                          context_in_dim=32, hidden_size=64, mlp_ratio=2.0, num_heads=2, depth=1, depth_single_blocks=1,
                          axes_dim=[8, 12, 12], theta=10000, qkv_bias=True, guidance_embed=False, txt_ids_dims=[]))
    config.set_inference_dtype(torch.float32, None)
    flux = comfy.model_patcher.ModelPatcher(config.get_model({}, device="meta"), "cpu", "cpu")
    expected = r"expected the MODEL to be an SD-family UNet .*, found Flux, which has no UNet blocks"
    with pytest.raises(AdapterCompatibilityError, match=expected):
        patch.apply_adapter(flux, make_adapter(), "sd1_adapter")
    with pytest.raises(AdapterCompatibilityError, match=expected):
        patch.fresh_adapter_for_model(flux)


def test_applying_and_sampling_leave_the_adapter_weights_unchanged(tiny_sd1, tools):
    patch, make_adapter, *_ = tools
    adapter = make_adapter()
    before = {k: v.clone() for k, v in adapter.model.state_dict().items()}
    sample(patch.apply_adapter(tiny_sd1[0], adapter, "x"), tools, steps=1)
    after = adapter.model.state_dict()
    assert all(torch.equal(after[k], v) and after[k].dtype == v.dtype for k, v in before.items())


def test_core_controlnet_with_per_frame_hints_works_with_an_adapter(tiny_sd1, tools, pack_module):
    """Core ControlNet (a tiny one in ComfyUI's own cldm architecture) with one hint image per
    frame, through core's ControlNetApplyAdvanced, on a patched model."""
    import comfy.cldm.cldm
    import comfy.controlnet
    import comfy.model_management
    import comfy.ops
    import comfy.sample
    import nodes

    patch, make_adapter, positive, negative = tools
    unet = tiny_bundles.tiny_sd1_spec().unet_config
    control_model = comfy.cldm.cldm.ControlNet(hint_channels=3, operations=comfy.ops.manual_cast, device="cpu",
                                               **{k: v for k, v in unet.items() if k not in ("out_channels", "transformer_depth_output")})
    torch.manual_seed(4)
    with torch.no_grad():
        for p in control_model.parameters():
            p.copy_(torch.randn_like(p) * 0.05)
    control_net = comfy.controlnet.ControlNet(control_model, load_device=comfy.model_management.get_torch_device(),
                                              manual_cast_dtype=None)
    hints = torch.rand(FRAMES, 64, 64, 3)  # one hint per frame, pixel space (8x the 8x8 latent)
    pos, neg = nodes.ControlNetApplyAdvanced().apply_controlnet(positive, negative, control_net, hints, 1.0, 0.0, 1.0)
    patched = patch.apply_adapter(tiny_sd1[0], make_adapter(), "x")

    def run(p, n):
        latent = torch.zeros(FRAMES, 4, 8, 8)
        with torch.inference_mode():
            return comfy.sample.sample(patched, comfy.sample.prepare_noise(latent, 3), 2, 3.0, "euler", "normal", p, n,
                                       latent, disable_pbar=True, seed=3)

    controlled, free = run(pos, neg), run(positive, negative)
    assert torch.isfinite(controlled).all()
    assert (controlled - free).abs().max() > 1e-3, "the ControlNet hints had no effect"


@pytest.mark.parametrize("placement, options, max_frames", [
    ("videoldm", {}, None), ("videoldm", {"positional": "relative"}, None),
    ("videoldm", {"text_context": False}, None),   # attn2 attends over frames: the text never reaches it
    ("animatediff", {"max_len": 16}, 16), ("animatediff", {}, 32)])
def test_fresh_adapter_from_a_model_starts_as_the_identity(tiny_sd1, tools, placement, options, max_frames):
    patch = tools[0]
    model = tiny_sd1[0]
    spec, adapter = patch.fresh_adapter_for_model(model, placement, **options)
    assert spec.family == "SD1.x" and all(p.requires_grad for p in adapter.parameters())
    assert spec.max_frames == max_frames   # a positional table's length is checked before sampling
    adapter_patcher = patch.build_adapter_patcher(spec, adapter.state_dict(), "fresh")
    ran = []   # the slots run (their output layers start at zero), not skipped
    hooks = [m.register_forward_hook(lambda *a: ran.append(1)) for m in adapter_patcher.model.modules()]
    patched = patch.apply_adapter(model, adapter_patcher, "fresh")
    assert torch.equal(sample(patched, tools, steps=1), sample(model, tools, steps=1))
    assert ran
    for hook in hooks:
        hook.remove()


def test_the_adapter_runs_in_another_instance_of_the_unet_the_host_makes(tools, pack_module):
    """Core loads an adapted MODEL's UNet again for a non-dynamic delegate (DynamicVRAM with hooked
    conds), TorchCompile under DynamicVRAM: clone(force_deepcopy) through cached_patcher_init. The
    adapter's slots are found there by layer path; before, they were keyed to the first instance and
    the copy sampled as the image model without a word."""
    from devtools import tiny_bundles

    patch, make_adapter, _, _ = tools
    spec = tiny_bundles.tiny_sd1_spec()

    def load(disable_dynamic=False):
        return pack_module("host.bundle").build_model(spec, tiny_bundles.random_bundle_state_dict(spec, seed=5),
                                                      disable_dynamic=disable_dynamic)

    model = load()
    model.cached_patcher_init = (load, ())   # as core's loaders register it
    applied = patch.apply_adapter(model, make_adapter(), "a")
    image, video = sample(model, tools), sample(applied, tools)
    assert (video - image).abs().max() > 1e-3
    copy = applied.clone(force_deepcopy=True)
    assert copy.model.diffusion_model is not applied.model.diffusion_model
    assert torch.equal(sample(copy, tools), video)
