"""Public motion modules sampled the way they were trained: `noise_schedule=auto` gives the sigmas
of each release's own scheduler config (an oracle written from those configs in diffusers' terms,
not from the pack's table), on the patched clone only; `model` keeps the checkpoint's own.

The configs (README "Public weights" cites the lines): AnimateDiff v1/v2/v3 `beta_schedule: linear`
0.00085→0.012; the SDXL beta module `scaled_linear` 0.00085→0.020; HotshotXL SDXL's own
`scaled_linear` 0.00085→0.012; AnimateLCM t2v `linear` 0.00085→0.012 sampled by LCMScheduler with
`original_inference_steps: 100`.
"""

import dataclasses

import pytest
import torch
from safetensors.torch import save_file

from devtools import unet_configs
from devtools.public_layouts import VARIANTS, animatediff_state_dict

# name: (diffusers beta_schedule, beta_start, beta_end, LCM original_inference_steps)
ORIGINAL_CONFIGS = {
    "v1": ("linear", 0.00085, 0.012, None),
    "v2": ("linear", 0.00085, 0.012, None),
    "v3": ("linear", 0.00085, 0.012, None),
    "sdxl": ("scaled_linear", 0.00085, 0.020, None),
    "hotshotxl": ("scaled_linear", 0.00085, 0.012, None),
    "animatelcm": ("linear", 0.00085, 0.012, 100),
}
SD_OWN = ("scaled_linear", 0.00085, 0.012, None)


def diffusers_sigmas(beta_schedule, beta_start, beta_end, lcm_steps, timesteps=1000):
    """σ of each timestep the original scheduler samples: diffusers' betas (float32), ᾱ, and for
    LCM its original timesteps (1..steps)·(T // steps) − 1."""
    if beta_schedule == "linear":
        betas = torch.linspace(beta_start, beta_end, timesteps, dtype=torch.float32)
    else:
        betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, timesteps, dtype=torch.float32) ** 2
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
    if lcm_steps is not None:
        sigmas = sigmas[torch.arange(1, lcm_steps + 1) * (timesteps // lcm_steps) - 1]
    return sigmas.double()


@pytest.fixture(scope="module")
def tiny_sdxl(pack_module):
    """A random-weight SDXL-architecture ComfyUI model at small width (SDXL's own sampling settings)."""
    import comfy.model_patcher
    import comfy.supported_models as sm

    config = unet_configs.tiny(unet_configs.SDXL)
    model_config = sm.SDXL(dict(config, adm_in_channels=None, num_classes=None))
    model_config.unet_config.update(num_heads=config["num_heads"], num_head_channels=config["num_head_channels"])
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({}, device="cpu")
    return comfy.model_patcher.ModelPatcher(model, "cpu", "cpu"), [config["model_channels"] * m for m in config["channel_mult"]]


@pytest.fixture(scope="module")
def motion_module(pack_module, tiny_sd1, tiny_sdxl, tmp_path_factory):
    """(base MODEL, LoadedAdapter) of a variant, read from a file in its public layout by the real loader."""
    loader = pack_module("host.temporal_adapter")
    folder = tmp_path_factory.mktemp("motion_modules")

    def load(variant):
        kwargs = dict(VARIANTS[variant])
        if kwargs["widths"] != VARIANTS["v1"]["widths"]:
            model, kwargs["widths"] = tiny_sdxl
        else:
            model = tiny_sd1[0]
        path = folder / f"{variant}.safetensors"
        save_file(animatediff_state_dict(**kwargs), str(path))
        return model, loader.load_temporal_adapter(str(path), path.name)

    return load


def sigmas(model):
    return model.get_model_object("model_sampling").sigmas.double()


@pytest.mark.parametrize("variant", list(ORIGINAL_CONFIGS))
def test_auto_reproduces_the_sigmas_of_the_trained_schedule(variant, motion_module, pack_module):
    apply = pack_module("host.temporal_adapter").apply_adapter
    model, adapter = motion_module(variant)
    own = sigmas(model).clone()
    patched = apply(model, adapter.patcher, adapter.name)
    expected = diffusers_sigmas(*ORIGINAL_CONFIGS[variant])
    assert sigmas(patched).shape == expected.shape
    torch.testing.assert_close(sigmas(patched), expected, rtol=2e-5, atol=0)
    assert torch.equal(sigmas(model), own), "the input MODEL's schedule changed"
    torch.testing.assert_close(own, diffusers_sigmas(*SD_OWN), rtol=2e-5, atol=0)
    kept = apply(model, adapter.patcher, adapter.name, noise_schedule="model")
    assert kept.get_model_object("model_sampling") is model.get_model_object("model_sampling")


@pytest.mark.parametrize("variant", ["v1", "animatelcm"])
def test_neither_schedule_takes_the_others_through_a_restore_of_buffers_by_path(variant, motion_module, pack_module):
    """DynamicVRAM's patcher (ModelPatcherDynamic.load, restore_loaded_backups) backs up every buffer
    of the model by path and writes the backups into whatever object sits at that path at the next
    load, the object patch or the checkpoint's own (ComfyUI issue 16490). The adapter's schedule is
    never backed up, and writing the checkpoint's tables to its path leaves it as it was."""
    import comfy.utils

    model, adapter = motion_module(variant)
    patched = pack_module("host.temporal_adapter").apply_adapter(model, adapter.patcher, adapter.name)
    ours, own = patched.get_model_object("model_sampling"), model.get_model_object("model_sampling")
    expected, expected_log, own_before = ours.sigmas.clone(), ours.log_sigmas.clone(), own.sigmas.clone()
    assert not torch.equal(expected[:10], own_before[:10])
    restoring = torch.nn.Module()   # the model as the restore sees it while the clone is loaded
    restoring.model_sampling = ours
    assert not [k for k, _ in restoring.named_buffers() if k.startswith("model_sampling.")]
    comfy.utils.set_attr_buffer(restoring, "model_sampling.sigmas", own.sigmas)
    comfy.utils.set_attr_buffer(restoring, "model_sampling.log_sigmas", own.log_sigmas)
    assert torch.equal(ours.sigmas, expected) and torch.equal(ours.log_sigmas, expected_log)
    assert torch.equal(own.sigmas, own_before)
    torch.testing.assert_close(ours.sigmas.double(), diffusers_sigmas(*ORIGINAL_CONFIGS[variant]), rtol=2e-5, atol=0)


def test_animatelcm_samples_as_a_consistency_model_on_its_100_original_timesteps(motion_module, pack_module):
    import comfy_extras.nodes_model_advanced as advanced

    model, adapter = motion_module("animatelcm")
    sampling = pack_module("host.temporal_adapter").apply_adapter(model, adapter.patcher, adapter.name).get_model_object("model_sampling")
    assert isinstance(sampling, advanced.LCM)
    steps = torch.tensor([0, 50, 99])
    assert torch.equal(sampling.timestep(sampling.sigmas[steps]).long(), steps * 10 + 9)   # LCMScheduler's timesteps


def test_an_explicit_schedule_and_stacked_adapters(motion_module, pack_module, tiny_sd1):
    patch = pack_module("host.temporal_adapter")
    schedule = pack_module("host.noise_schedule")
    model, v1 = motion_module("v1")
    _, v3 = motion_module("v3")
    named = patch.apply_adapter(model, v1.patcher, v1.name, noise_schedule="linear 0.00085-0.012")
    torch.testing.assert_close(sigmas(named), diffusers_sigmas(*SD_OWN), rtol=2e-5, atol=0)
    # two modules trained with the same schedule stack; a native adapter trained on the model's own does not
    stacked = patch.apply_adapter(patch.apply_adapter(model, v1.patcher, v1.name), v3.patcher, v3.name)
    torch.testing.assert_close(sigmas(stacked), diffusers_sigmas(*ORIGINAL_CONFIGS["v1"]), rtol=2e-5, atol=0)
    spec, module = patch.fresh_adapter_for_model(model)
    assert spec.beta_schedule == pack_module("videoldm_core.noise_schedule").SD_SCHEDULE
    native = patch.build_adapter_patcher(spec, module.state_dict(), "native")
    first = patch.apply_adapter(model, v1.patcher, v1.name)
    with pytest.raises(schedule.ScheduleError, match=r"'v1.safetensors' with 'sqrt_linear 0.00085-0.012', 'native' with "
                                                     r"'linear 0.00085-0.012'. Pick one in noise_schedule"):
        patch.apply_adapter(first, native, "native")
    picked = patch.apply_adapter(first, native, "native", noise_schedule="model")
    torch.testing.assert_close(sigmas(picked), diffusers_sigmas(*ORIGINAL_CONFIGS["v1"]), rtol=2e-5, atol=0)


def test_without_adapters_takes_off_the_adapters_and_their_schedule_and_nothing_else(motion_module, pack_module, tiny_sd1):
    """What Train Temporal Adapter starts from: a user's ModelSamplingDiscrete (zsnr) and wrapper
    applied before v1 are kept; v1's layers, wrappers, clip-wide norms and schedule are gone."""
    import comfy.patcher_extension
    from comfy_extras.nodes_model_advanced import ModelSamplingDiscrete

    patch = pack_module("host.temporal_adapter")
    model, v1 = motion_module("v1")
    users = ModelSamplingDiscrete().patch(model, "eps", True)[0]
    calls = []
    users.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "users",
                               lambda executor, *args, **kwargs: calls.append(1) or executor(*args, **kwargs))
    patched = patch.apply_adapter(users, v1.patcher, v1.name)
    assert not torch.equal(sigmas(patched), sigmas(users)) and len(patched.get_all_wrappers("diffusion_model")) == 3
    bare = patch.without_adapters(patched)
    assert bare.get_model_object("model_sampling") is users.get_model_object("model_sampling")
    assert not patch.applied_adapters(bare) and not bare.get_additional_models()
    assert bare.get_all_wrappers("diffusion_model") == users.get_all_wrappers("diffusion_model")
    assert not bare.get_all_wrappers("outer_sample")
    assert not bare.model_options["transformer_options"]["patches"]["forward_timestep_embed_patch"]
    assert torch.equal(sample(bare, tiny_sd1[1]), sample(users, tiny_sd1[1])) and calls
    assert [a.name for a in patch.applied_adapters(patched)] == [v1.name], "the input MODEL changed"
    assert patch.without_adapters(users) is users
    # a ModelSampling node between two adapters is what stays
    between = ModelSamplingDiscrete().patch(patch.apply_adapter(model, v1.patcher, v1.name), "eps", True)[0]
    stacked = patch.apply_adapter(between, v1.patcher, "again")
    assert patch.without_adapters(stacked).get_model_object("model_sampling") is between.get_model_object("model_sampling")
    # the adapter's schedule over the checkpoint's own: taken off, the object patch goes too
    assert "model_sampling" not in patch.without_adapters(patch.apply_adapter(model, v1.patcher, v1.name)).object_patches


def test_an_lcm_sampling_set_before_the_adapters_is_kept_on_their_betas(motion_module, pack_module):
    """An LCM LoRA workflow: ModelSamplingDiscrete 'lcm' (50 original timesteps), then v1 and v3 on
    auto: sampled as LCM on v1's betas (ADE's 'lcm >> sqrt_linear'), not plain sqrt_linear."""
    import comfy_extras.nodes_model_advanced as advanced

    patch = pack_module("host.temporal_adapter")
    model, v1 = motion_module("v1")
    _, v3 = motion_module("v3")
    users = advanced.ModelSamplingDiscrete().patch(model, "lcm", False)[0]
    patched = patch.apply_adapter(patch.apply_adapter(users, v1.patcher, v1.name), v3.patcher, v3.name)
    sampling = patched.get_model_object("model_sampling")
    assert isinstance(sampling, advanced.LCM)
    torch.testing.assert_close(sigmas(patched), diffusers_sigmas("linear", 0.00085, 0.012, 50), rtol=2e-5, atol=0)
    assert not torch.equal(sigmas(users), sigmas(patched))
    plain = patch.apply_adapter(model, v1.patcher, v1.name)
    assert not isinstance(plain.get_model_object("model_sampling"), advanced.LCM)
    assert patch.without_adapters(patched).get_model_object("model_sampling") is users.get_model_object("model_sampling")


def test_without_adapters_gives_back_the_users_sampling_after_a_second_adapter_changed_the_schedule(
        motion_module, pack_module):
    """The user's ModelSamplingDiscrete, then v1 on auto (its schedule replaces the user's sampling),
    then v3 with another schedule picked by name (which replaces v1's). Taking the adapters off
    restores the user's sampling object, not v1's: the second replacement must not be remembered as
    what the adapters replaced."""
    import comfy_extras.nodes_model_advanced as advanced

    patch = pack_module("host.temporal_adapter")
    model, v1 = motion_module("v1")
    _, v3 = motion_module("v3")
    users = advanced.ModelSamplingDiscrete().patch(model, "eps", False)[0]
    first = patch.apply_adapter(users, v1.patcher, v1.name)
    patched = patch.apply_adapter(first, v3.patcher, v3.name, noise_schedule="linear 0.00085-0.012")
    torch.testing.assert_close(sigmas(patched), diffusers_sigmas(*SD_OWN), rtol=2e-5, atol=0)
    assert patched.get_model_object("model_sampling") is not first.get_model_object("model_sampling")
    assert patch.without_adapters(patched).get_model_object("model_sampling") is users.get_model_object("model_sampling")


def test_an_lcm_sampling_set_before_animatelcm_keeps_the_modules_own_100_timesteps(motion_module, pack_module):
    """A user's ModelSamplingDiscrete 'lcm' (50 original timesteps) before AnimateLCM on auto: the
    module is itself a consistency model, trained on 100 original timesteps (LCMScheduler's
    original_inference_steps), and samples on those; only a schedule that is not LCM takes the
    user's count. Expected sigmas from diffusers' formula, not from the pack."""
    import comfy_extras.nodes_model_advanced as advanced

    patch = pack_module("host.temporal_adapter")
    model, animatelcm = motion_module("animatelcm")
    users = advanced.ModelSamplingDiscrete().patch(model, "lcm", False)[0]
    patched = patch.apply_adapter(users, animatelcm.patcher, animatelcm.name)
    assert isinstance(patched.get_model_object("model_sampling"), advanced.LCM)
    torch.testing.assert_close(sigmas(patched), diffusers_sigmas(*ORIGINAL_CONFIGS["animatelcm"]), rtol=2e-5, atol=0)
    assert sigmas(patched).shape == (100,)


def test_a_model_sampling_node_after_the_adapter_is_named_when_the_run_samples(motion_module, pack_module, tiny_sd1,
                                                                           caplog):
    """A ModelSamplingDiscrete placed after Apply Temporal Adapter replaces the schedule the module
    was trained with (ComfyUI's patch wins); the host's node keeps working, and the run's log says
    the module does not sample as trained. Placed before it, nothing is said."""
    import logging

    import comfy.sample
    import comfy_extras.nodes_model_advanced as advanced

    patch = pack_module("host.temporal_adapter")
    model, v3 = motion_module("v3")
    positive = tiny_sd1[1].encode_from_tokens_scheduled(tiny_sd1[1].tokenize("a fox"))
    latent = torch.zeros(2, 4, 8, 8)

    def sample(m):
        with caplog.at_level(logging.WARNING, logger="videoldm"), torch.inference_mode():
            comfy.sample.sample(m, comfy.sample.prepare_noise(latent, 0), 1, 1.0, "euler", "normal", positive, positive,
                                latent, disable_pbar=True)
        said, _ = caplog.text, caplog.clear()
        return said

    discrete = advanced.ModelSamplingDiscrete()
    after = discrete.patch(patch.apply_adapter(model, v3.patcher, v3.name), "eps", False)[0]
    said = sample(after)
    assert f"temporal adapter '{v3.name}' was trained with 'sqrt_linear" in said
    assert "a node after Apply Temporal Adapter replaced the model's sampling (ModelSamplingAdvanced)" in said
    assert "replaced the model's sampling" not in sample(after), "said once for a MODEL sampled again"
    # an LCM after the module: LCM on SD's betas, not on the module's (what an LCM before it would give)
    assert "replaced the model's sampling" in sample(discrete.patch(patch.apply_adapter(model, v3.patcher, v3.name),
                                                                    "lcm", False)[0])
    silent = {
        "before": patch.apply_adapter(discrete.patch(model, "eps", False)[0], v3.patcher, v3.name),
        "none": patch.apply_adapter(model, v3.patcher, v3.name),
        # noise_schedule 'model': the user keeps the model's sampling, whatever sets it later
        "model": discrete.patch(patch.apply_adapter(model, v3.patcher, v3.name, noise_schedule="model"), "lcm", False)[0],
        # a schedule equal to the model's own, then LCM on it: what an LCM before the adapter samples too
        "own then lcm": discrete.patch(patch.apply_adapter(model, v3.patcher, v3.name, noise_schedule="linear 0.00085-0.012"),
                                       "lcm", False)[0],
    }
    for name, graph in silent.items():
        assert "replaced the model's sampling" not in sample(graph), name
    # between two Apply nodes: the second sets the adapters' schedule again, and says the node had no effect
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="videoldm"):
        between = patch.apply_adapter(discrete.patch(patch.apply_adapter(model, v3.patcher, v3.name), "eps", False)[0],
                                      v3.patcher, "second")
    assert ("a node between Apply Temporal Adapter nodes changed the model's sampling (ModelSamplingAdvanced); "
            "applying 'second' sets the adapters' schedule again") in caplog.text
    assert "replaced the model's sampling" not in sample(between)


def version_1_native_file(adapter, path):
    """(path, name) of `adapter`'s weights saved as the pack's version-1 native format wrote them: no
    noise schedule, no clip norms stated."""
    import json

    from safetensors.torch import save_file

    spec = {k: v for k, v in json.loads(adapter.spec.to_json()).items() if k not in ("noise_schedule", "clip_norms")}
    spec.update(version=1, trained_frames=16, extra={}, source="native")
    save_file({k: v.contiguous() for k, v in adapter.patcher.model.state_dict().items()}, str(path),
              metadata={"videoldm_adapter": json.dumps(spec)})
    return str(path), path.name


def test_an_adapter_on_the_models_own_schedule_after_a_sampling_node_keeps_the_stacks_schedule(
        motion_module, pack_module, tmp_path):
    """v1 on auto, then a ModelSamplingDiscrete 'eps' (SD's own betas again), then an adapter that
    states no schedule (a version-1 native file: trained on whatever the base model samples with).
    Such an adapter asks for nothing, so it is no conflict with v1's: the stack keeps v1's schedule
    (sqrt_linear, diffusers' sigmas). Only adapters that were trained with a stated schedule that
    differs are refused as a conflicting stack."""
    import comfy_extras.nodes_model_advanced as advanced

    patch = pack_module("host.temporal_adapter")
    model, v1 = motion_module("v1")
    unstated = patch.load_temporal_adapter(*version_1_native_file(v1, tmp_path / "unstated.safetensors"))
    assert unstated.spec.noise_schedule is None
    between = advanced.ModelSamplingDiscrete().patch(patch.apply_adapter(model, v1.patcher, v1.name), "eps", False)[0]
    stacked = patch.apply_adapter(between, unstated.patcher, unstated.name)
    torch.testing.assert_close(sigmas(stacked), diffusers_sigmas(*ORIGINAL_CONFIGS["v1"]), rtol=2e-5, atol=0)


@pytest.mark.parametrize("node, sampling, settings", [
    ("ModelSamplingContinuousEDM", "edm_playground_v2.5", (120.0, 0.002)),   # Playground v2.5
    ("ModelSamplingContinuousEDM", "v_prediction", (120.0, 0.002)),          # CosXL: v on EDM's σ, not V
    ("ModelSamplingDiscrete", "x0", (False,)),                               # discrete, but X0 is no ε
])
def test_auto_keeps_a_sampling_its_unet_was_trained_on_that_a_discrete_table_would_break(
        node, sampling, settings, motion_module, pack_module, caplog):
    """The SDXL beta module on an SDXL that samples in EDM's terms or predicts x0: auto once put a
    discrete table on it (the UNet read timesteps 0-999 in place of its EDM noise input, and EDM's
    prediction was taken for its base class, v). Auto keeps the model's sampling and says why; the
    module's schedule picked by name is refused, naming the problem."""
    import comfy_extras.nodes_model_advanced as advanced

    patch = pack_module("host.temporal_adapter")
    model, sdxl = motion_module("sdxl")
    users = getattr(advanced, node)().patch(model, sampling, *settings)[0]
    x, sigma = torch.randn(1, 4, 8, 8), torch.tensor([1.0])
    with caplog.at_level("WARNING", logger="videoldm"):
        patched = patch.apply_adapter(users, sdxl.patcher, sdxl.name)
    assert patched.get_model_object("model_sampling") is users.get_model_object("model_sampling")
    ours, theirs = (m.get_model_object("model_sampling") for m in (patched, users))
    assert torch.equal(ours.timestep(sigma), theirs.timestep(sigma))
    assert "auto keeps the model's own sampling" in caplog.text and "sdxl" in caplog.text.lower()
    stacked = patch.apply_adapter(patched, sdxl.patcher, sdxl.name)   # a second adapter agrees, no error
    assert stacked.get_model_object("model_sampling") is theirs
    with pytest.raises(ValueError, match=r"cannot sample this model: the model (samples with ModelSampling|predicts X0)"):
        patch.apply_adapter(users, sdxl.patcher, sdxl.name, noise_schedule=sdxl.spec.beta_schedule.label)
    assert torch.equal(ours.calculate_denoised(sigma, x, x), theirs.calculate_denoised(sigma, x, x))


def test_a_v_prediction_sdxl_on_discrete_timesteps_still_gets_the_modules_schedule(motion_module, pack_module):
    """v prediction on discrete timesteps (SD2.x-v, an SDXL v fine-tune) is what a discrete table takes."""
    import comfy.model_sampling
    import comfy_extras.nodes_model_advanced as advanced

    patch = pack_module("host.temporal_adapter")
    model, sdxl = motion_module("sdxl")
    users = advanced.ModelSamplingDiscrete().patch(model, "v_prediction", False)[0]
    sampling = patch.apply_adapter(users, sdxl.patcher, sdxl.name).get_model_object("model_sampling")
    assert isinstance(sampling, comfy.model_sampling.V_PREDICTION)
    torch.testing.assert_close(sampling.sigmas.double(), diffusers_sigmas(*ORIGINAL_CONFIGS["sdxl"]), rtol=2e-5, atol=0)


def test_unknown_schedule_name_is_refused(motion_module, pack_module):
    model, v2 = motion_module("v2")
    with pytest.raises(ValueError, match=r"noise_schedule: expected one of \('auto', 'model', .*found 'cosine'"):
        pack_module("host.temporal_adapter").apply_adapter(model, v2.patcher, v2.name, noise_schedule="cosine")


def sample(model, clip, frames=4, cfg=3.0, steps=2, seed=3):
    import comfy.sample

    positive = clip.encode_from_tokens_scheduled(clip.tokenize("a red square moving left"))
    negative = clip.encode_from_tokens_scheduled(clip.tokenize(""))
    latent = torch.zeros(frames, 4, 8, 8)
    with torch.inference_mode():
        return comfy.sample.sample(model, comfy.sample.prepare_noise(latent, seed), steps, cfg, "euler", "normal",
                                   positive, negative, latent, disable_pbar=True, seed=seed)


def test_the_input_model_samples_bit_identically_around_a_clone_with_v1s_schedule_and_norms(motion_module, pack_module, tiny_sd1):
    model, v1 = motion_module("v1")
    clip = tiny_sd1[1]
    before = sample(model, clip)
    patched = pack_module("host.temporal_adapter").apply_adapter(model, v1.patcher, v1.name)
    assert v1.spec.clip_norms == ["resblock", "output"] and sigmas(patched)[-1] != sigmas(model)[-1]
    video = sample(patched, clip)
    after = sample(model, clip)
    assert torch.equal(before, after)
    assert (video - before).abs().max() > 1e-3


def test_model_schedule_and_per_frame_norms_sample_as_a_version_1_file_of_the_same_weights(motion_module, pack_module,
                                                                                              tiny_sd1, tmp_path):
    """noise_schedule=model with the norms per frame is the sampling of before this round: a version-1
    native file of the same weights (no schedule, no clip norms: the pack wrote them so) samples the same."""
    patch = pack_module("host.temporal_adapter")
    model, v1 = motion_module("v1")
    per_frame = dataclasses.replace(v1.spec, clip_norms=[])
    today = patch.apply_adapter(model, patch.build_adapter_patcher(per_frame, v1.patcher.model.state_dict(), "v1"), "v1",
                                noise_schedule="model")
    old = patch.load_temporal_adapter(*version_1_native_file(v1, tmp_path / "v1_native_version1.safetensors"))
    assert old.spec.version == 2 and old.spec.noise_schedule is None and old.spec.clip_norms == []
    as_before = patch.apply_adapter(model, old.patcher, old.name)
    assert today.get_model_object("model_sampling") is model.get_model_object("model_sampling")
    assert torch.equal(sample(today, tiny_sd1[1]), sample(as_before, tiny_sd1[1]))


def test_strength_scales_the_clip_wide_norms_too(motion_module, pack_module, tiny_sd1):
    """v1 runs the image model's norms over the clip: near strength 0 it samples near the image
    model, as the strength tooltip promises, not with every norm over the clip at once."""
    patch = pack_module("host.temporal_adapter")
    model, v1 = motion_module("v1")
    clip = tiny_sd1[1]
    image = sample(model, clip)
    change = {s: (sample(patch.apply_adapter(model, v1.patcher, v1.name, strength=s, noise_schedule="model"), clip)
                  - image).abs().max().item() for s in (1e-3, 1.0)}
    assert change[1.0] > 1e-2 and change[1e-3] < 0.01 * change[1.0], change


def test_stacked_clip_wide_norms_run_at_the_strongest_adapters_strength(motion_module, pack_module, tiny_sd1):
    """Two v1 modules stacked, at 0.3 then at 1.0: the norms they both run over the clip run at
    the larger strength, 1.0. So the weaker one's clip norms add nothing: the stack samples as the
    same stack with the weaker module's norms per frame (the 1.0 module's alone set them). With the
    smaller strength taken, the stronger module's clip norms were weakened to 0.3 by the other's."""
    patch = pack_module("host.temporal_adapter")
    model, v1 = motion_module("v1")
    clip = tiny_sd1[1]
    weights = v1.patcher.model.state_dict()
    per_frame = patch.build_adapter_patcher(dataclasses.replace(v1.spec, clip_norms=[]), weights, "v1 per frame")

    def stack(weak, strong):
        weaker = patch.apply_adapter(model, weak, "weak", strength=0.3, noise_schedule="model")
        return sample(patch.apply_adapter(weaker, strong, "strong", strength=1.0, noise_schedule="model"), clip)

    both = stack(v1.patcher, v1.patcher)
    assert torch.equal(both, stack(per_frame, v1.patcher))
    weak_norms_only = stack(v1.patcher, per_frame)   # the clip norms at 0.3: a different video
    assert (both - weak_norms_only).abs().max() > 1e-3


# --- core Context Windows (Manual) at its defaults -------------------------------------------------

def manual_windows(model, **overrides):
    from comfy_extras.nodes_context_windows import ContextWindowsManualNode

    defaults = {i.id: i.default for i in ContextWindowsManualNode.define_schema().inputs if i.id != "model"}
    return ContextWindowsManualNode.execute(model, **{**defaults, **overrides}).result[0]


@pytest.mark.parametrize("freenoise", [False, True])
def test_a_motion_module_in_core_context_windows_at_their_defaults(motion_module, pack_module, tiny_sd1, freenoise):
    """Defaults: windows of 16 with overlap 4, pyramid fusion, causal_window_fix on (an anchor frame
    before every window but the first: the temporal layers see 17 frames), FreeNoise off or on.
    v1 runs its clip-wide norms over each window's frames."""
    model, v1 = motion_module("v1")
    patched = pack_module("host.temporal_adapter").apply_adapter(model, v1.patcher, v1.name)
    seen = []
    handle = v1.patcher.model.slot("input_blocks.1").register_forward_hook(lambda m, args, out: seen.append(args[1]))
    try:
        windowed = manual_windows(patched, freenoise=freenoise)
        out = sample(windowed, tiny_sd1[1], frames=24, steps=1)
    finally:
        handle.remove()
    assert out.shape[0] == 24 and torch.isfinite(out).all()
    assert set(seen) == {16, 17}   # the first window, then windows with the anchor frame
    whole = sample(patched, tiny_sd1[1], frames=24, steps=1)
    assert (out - whole).abs().max() > 1e-4, "windows made no difference to a 24-frame sample"


def test_the_anchor_frame_counts_against_a_positional_limit_with_a_clear_error(pack_module, tiny_sd1):
    patch = pack_module("host.temporal_adapter")
    model = tiny_sd1[0]
    spec, module = patch.fresh_adapter_for_model(model, placement="animatediff", max_len=16)
    adapter = patch.build_adapter_patcher(spec, module.state_dict(), "mm16")
    patched = patch.apply_adapter(model, adapter, "mm16")
    with pytest.raises(ValueError, match=r"in context windows of 16 frames plus the anchor frame that core's "
                                         r"causal_window_fix prepends.*encodes at most 16 frames.*17 frames were sampled"):
        sample(manual_windows(patched), tiny_sd1[1], frames=28, steps=1)
    out = sample(manual_windows(patched, causal_window_fix=False), tiny_sd1[1], frames=28, steps=1)
    assert torch.isfinite(out).all()
