"""The pack's samplers honour the host: the context-guided prediction goes through core's CFG path.

Oracle: core's own `sampling_function`, fed the same branch predictions (a cond-batch function that
returns g = f(p) + s·(f(p, c_S) − f(p)) and the negative), with the same hooks. The pack's guider
must give exactly what core gives: RescaleCFG (a sampler_cfg_function) and TCFG (a pre-CFG hook),
at context scale 1 and 1.5. A CFG++ sampler at cfg 1 needs the negative branch (it disables the
cfg-1 optimisation) and runs. Extend Video, Interpolate Keyframes and Video Upscale take core
SAMPLER / SIGMAS / NOISE."""

import pytest
import torch

from tests.host.test_context_sampling import FRAMES, context_guider, video_context


def probe_sampler(record):
    """A core SAMPLER that makes one model call at the first sigma and returns the prediction."""
    import comfy.samplers

    def one_call(model, x, sigmas, extra_args=None, callback=None, disable=None):
        denoised = model(x, sigmas[0] * x.new_ones([x.shape[0]]), **(extra_args or {}))
        record.append(denoised)
        return denoised

    return comfy.samplers.KSAMPLER(one_call)


def guided_prediction(guider, seed=3):
    import comfy.sample
    import comfy.samplers

    latent = torch.zeros(FRAMES, 4, 8, 8)
    sigmas = comfy.samplers.calculate_sigmas(guider.model_patcher.get_model_object("model_sampling"), "normal", 4).cpu()
    record = []
    with torch.inference_mode():
        guider.sample(comfy.sample.prepare_noise(latent, seed), latent, probe_sampler(record), sigmas, disable_pbar=True, seed=seed)
    return record[0]


def with_hooks(model):
    import comfy_extras.nodes_model_advanced as advanced
    import comfy_extras.nodes_tcfg as tcfg

    model = advanced.RescaleCFG().patch(model, 0.7)[0]
    return tcfg.TCFG.execute(model)[0]


def branch_recorder(record):
    import comfy.samplers

    def calc(args):
        out = comfy.samplers.calc_cond_batch(args["model"], args["conds"], args["input"], args["sigma"], args["model_options"])
        record.append(dict(args, out=out))
        return out

    return calc


@pytest.mark.parametrize("context_scale", [1.0, 1.5])
def test_rescale_cfg_and_a_pre_cfg_hook_act_as_in_core_sampling(ctx, given, context_scale):
    import comfy.samplers

    context = video_context(ctx, given, [0, 1])
    cfg = 4.0
    hooked = with_hooks(ctx["predictor"])
    record = []
    recording = hooked.clone()
    recording.model_options["sampler_calc_cond_batch_function"] = branch_recorder(record)
    got = guided_prediction(context_guider(ctx, recording, context, cfg=cfg, scale=context_scale))

    call = record[0]
    cond, uncond = call["out"]
    assert len(call["conds"]) == 2   # core's contract for the hook: [cond, uncond]
    if context_scale != 1.0:   # the context-dropped positive: a second call, as [cond, None]
        assert record[1]["conds"][1] is None and record[1]["conds"][0] is not call["conds"][0]
        dropped = record[1]["out"][0]
        g = dropped + (cond - dropped) * context_scale
    else:
        assert len(record) == 1
        g = cond
    oracle_options = dict(call["model_options"], sampler_calc_cond_batch_function=lambda args: [g, uncond])
    expected = comfy.samplers.sampling_function(call["model"], call["input"], call["sigma"], call["conds"][1], call["conds"][0],
                                                cfg, model_options=oracle_options)
    # the probe returns through the denoise mask of the kept frames: compare the sampled frames
    assert torch.equal(got[2:], expected[2:].to(got))
    plain = guided_prediction(context_guider(ctx, ctx["predictor"], context, cfg=cfg, scale=context_scale))
    assert (got[2:] - plain[2:]).abs().max() > 1e-4, "the hooks changed nothing"


def test_core_skip_layer_guidance_hook_runs_with_context_guidance(ctx, given):
    """Core's Skip Layer Guidance hook unpacks conds as (cond, uncond): the guider keeps that contract
    when it adds the context-dropped branch, and the result is what the guider gives without the hook
    (on a UNet SLG replaces no DiT block, so its hook runs core's plain cond batching)."""
    from comfy_extras.nodes_slg import SkipLayerGuidanceDiTSimple

    context = video_context(ctx, given, [0, 1])
    hooked = SkipLayerGuidanceDiTSimple.execute(ctx["predictor"], 0.0, 1.0, "7", "7").result[0]
    got = guided_prediction(context_guider(ctx, hooked, context, cfg=4.0, scale=1.5))
    plain = guided_prediction(context_guider(ctx, ctx["predictor"], context, cfg=4.0, scale=1.5))
    # the hook runs cond and uncond in separate forwards, the guider alone batches them: float32 rounding
    torch.testing.assert_close(got, plain, atol=2e-5 * plain.abs().max().item(), rtol=0)


def test_a_cfg_pp_sampler_at_cfg_1_gets_the_negative_branch(ctx, given):
    import comfy.sample
    import comfy.samplers

    context = video_context(ctx, given, [0, 1])
    record = []
    recording = ctx["predictor"].clone()
    recording.model_options["sampler_calc_cond_batch_function"] = branch_recorder(record)
    guider = context_guider(ctx, recording, context, cfg=1.0, scale=1.5)
    latent = torch.zeros(FRAMES, 4, 8, 8)
    sigmas = comfy.samplers.calculate_sigmas(recording.get_model_object("model_sampling"), "normal", 2).cpu()
    with torch.inference_mode():
        out = guider.sample(comfy.sample.prepare_noise(latent, 3), latent, comfy.samplers.sampler_object("euler_cfg_pp"),
                            sigmas, disable_pbar=True, seed=3)
    assert torch.isfinite(out).all()
    main, dropped = record[0::2], record[1::2]   # a hook gets [positive, negative], then [no context, None]
    assert main and len(main) == len(dropped) and all(r["conds"][1] is None for r in dropped)
    assert all(r["conds"][1] is not None for r in main), "CFG++ needs the unconditional prediction"
    record.clear()
    guided_prediction(context_guider(ctx, recording, context, cfg=1.0, scale=1.5))
    assert record[0]["conds"][1] is None, "plain samplers keep the cfg-1 optimisation"


def test_extend_video_takes_core_sampler_sigmas_and_noise(ctx, given, caplog):
    import comfy.samplers
    from comfy_extras.nodes_custom_sampler import Noise_RandomNoise

    extend = ctx["nodes"].rollout.ExtendVideo.execute
    video = {"samples": given[:1]}
    kw = dict(model=ctx["predictor"], positive=ctx["positive"], negative=ctx["negative"], video=video, segments=2,
              segment_length=4, context_frames=2, seed=5, steps=3, cfg=2.0, context_scale=1.0, sampler_name="euler",
              scheduler="normal")
    own = extend(**kw).result[0]["samples"]
    sigmas = comfy.samplers.calculate_sigmas(ctx["predictor"].get_model_object("model_sampling"), "normal", 3).cpu()
    with caplog.at_level("WARNING", logger="videoldm"):
        same = extend(**kw, sampler=comfy.samplers.sampler_object("euler"), sigmas=sigmas).result[0]["samples"]
    assert torch.equal(own, same)
    assert "below the model's largest noise level" not in caplog.text
    with caplog.at_level("WARNING", logger="videoldm"):   # a truncated schedule (denoise < 1): said, not refused
        other = extend(**kw, sigmas=sigmas[1:]).result[0]["samples"]
    assert (other - own).abs().max() > 1e-3
    assert f"starts at sigma {float(sigmas[1]):.4g}, below the model's largest noise level" in caplog.text
    caplog.clear()   # core's ddim_uniform starts a full schedule below sigma_max: no warning for it
    ddim = comfy.samplers.calculate_sigmas(ctx["predictor"].get_model_object("model_sampling"), "ddim_uniform", 3).cpu()
    assert float(ddim[0]) < 0.99 * float(sigmas[0])
    with caplog.at_level("WARNING", logger="videoldm"):
        extend(**kw, sigmas=ddim)
    assert "below the model's largest noise level" not in caplog.text
    noise_a = extend(**kw, noise=Noise_RandomNoise(5)).result[0]["samples"]
    noise_b = extend(**kw, noise=Noise_RandomNoise(6)).result[0]["samples"]
    assert (noise_a - noise_b).abs().max() > 1e-3 and torch.equal(noise_a, extend(**kw, noise=Noise_RandomNoise(5)).result[0]["samples"])


def test_a_noise_input_is_one_draw_each_run_takes_its_frames_of(ctx):
    from comfy_extras.nodes_custom_sampler import Noise_RandomNoise

    run_noise = ctx["sampling"].RunNoise(0, Noise_RandomNoise(9), lengths=[4, 5], shape=(4, 8, 8))
    whole = Noise_RandomNoise(9).generate_noise({"samples": torch.zeros(9, 4, 8, 8)})
    assert torch.equal(run_noise(0, torch.zeros(4, 4, 8, 8)), whole[:4])
    assert torch.equal(run_noise(1, torch.zeros(5, 4, 8, 8)), whole[4:])
    assert (run_noise.run_seed(0), run_noise.run_seed(1)) == (9, 10)


@pytest.mark.parametrize("shape", [(6, 4, 8, 8), (3, 4, 64, 40), (5, 3, 3, 3)])   # the last: 27 per frame, drawn whole
def test_noise_made_on_the_device_frame_by_frame_is_cores_draw(ctx, shape):
    """Video Upscale's noise, made frame by frame on the model's device, is core's prepare_noise
    bit for bit, and leaves the global generator where core's draw leaves it."""
    import comfy.sample
    from comfy_extras.nodes_custom_sampler import Noise_RandomNoise

    latent = torch.zeros(1, 1, 1, 1).expand(shape)
    ours = ctx["sampling"].RunNoise(7).on_device(1, latent, torch.device("cpu"))
    after_ours = torch.rand(4)
    assert torch.equal(ours, comfy.sample.prepare_noise(latent, 8))
    assert torch.equal(after_ours, torch.rand(4))
    given = ctx["sampling"].RunNoise(0, Noise_RandomNoise(9), lengths=[shape[0]], shape=shape[1:])
    assert torch.equal(given.on_device(0, latent, torch.device("cpu")),
                       Noise_RandomNoise(9).generate_noise({"samples": torch.zeros(shape)}))


def test_a_connected_sampler_replaces_sampler_name_in_the_sigmas_too(ctx):
    """dpm_2 in the widget makes core KSampler drop the penultimate sigma; a connected SAMPLER
    replaces sampler_name, so the sigmas are core BasicScheduler's for that scheduler and steps."""
    import comfy.samplers

    model = ctx["plain"]
    own = ctx["sampling"].sampler_and_sigmas(model, "dpm_2", "normal", 4)[1]
    core = comfy.samplers.KSampler(model, 4, "cpu", "dpm_2", "normal").sigmas.cpu()
    assert torch.equal(own, core) and len(own) == 5
    euler = comfy.samplers.sampler_object("euler")
    sampler, sigmas = ctx["sampling"].sampler_and_sigmas(model, "dpm_2", "normal", 4, sampler=euler)
    basic = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "normal", 4).cpu()
    assert sampler is euler and torch.equal(sigmas, basic) and not torch.equal(sigmas, own)
