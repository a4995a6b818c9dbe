"""Sampling with context frames in a real ComfyUI: the Context Guider, Video Context and Extend
Video nodes on a tiny SD1.x model with a random-weight prediction adapter (made-up numbers, real paths)."""

import pytest
import torch

FRAMES = 6


def video_context(ctx, given, positions, frames=FRAMES):
    core = ctx["context"]
    return core.VideoContext(core.place_frames(given, positions, frames), tuple(positions))


def run(guider, frames=FRAMES, steps=2, seed=3, latent=None):
    import comfy.sample
    import comfy.samplers

    latent = torch.zeros(frames, 4, 8, 8) if latent is None else latent
    noise = comfy.sample.prepare_noise(latent, seed)
    sigmas = comfy.samplers.calculate_sigmas(guider.model_patcher.get_model_object("model_sampling"), "normal", steps).cpu()
    with torch.inference_mode():
        return guider.sample(noise, latent, comfy.samplers.sampler_object("euler"), sigmas, disable_pbar=True, seed=seed)


def context_guider(ctx, model, context, cfg=3.0, scale=1.0, keep=True, positive=None):
    g = ctx["guider"].ContextGuider(model, context, scale, keep)
    g.set_conds(positive or ctx["positive"], ctx["negative"])
    g.set_cfg(cfg)
    return g


def cfg_guider(model, positive, negative, cfg):
    import comfy.samplers

    g = comfy.samplers.CFGGuider(model)
    g.set_conds(positive, negative)
    g.set_cfg(cfg)
    return g


def test_an_all_zero_mask_is_bit_identical_to_no_context(ctx, given):
    no_context = run(cfg_guider(ctx["predictor"], ctx["positive"], ctx["negative"], 3.0))
    empty = ctx["context"].VideoContext(torch.zeros(FRAMES, 4, 8, 8), ())
    assert torch.equal(run(context_guider(ctx, ctx["predictor"], empty)), no_context)
    with_frames = run(context_guider(ctx, ctx["predictor"], video_context(ctx, given, [0, 1]), keep=False))
    assert (with_frames - no_context).abs().max() > 1e-3, "the context changed nothing"


def test_changing_a_given_frame_changes_the_output(ctx, given):
    a = run(context_guider(ctx, ctx["predictor"], video_context(ctx, given, [0, 1])))
    changed = given.clone()
    changed[1] += 1.0
    b = run(context_guider(ctx, ctx["predictor"], video_context(ctx, changed, [0, 1])))
    assert (a[2:] - b[2:]).abs().max() > 1e-3


def test_guidance_scale_one_is_the_plain_conditional_output(ctx, given):
    context = video_context(ctx, given, [0, 1])
    c_s = ctx["context"].context_input(ctx["predictor"].model.process_latent_in(context.latents), context.mask)
    with_context = ctx["guider"].with_context(ctx["positive"], c_s)
    plain_cond = run(cfg_guider(ctx["predictor"], with_context, ctx["negative"], 1.0), steps=1)
    assert torch.equal(run(context_guider(ctx, ctx["predictor"], context, cfg=1.0, scale=1.0, keep=False), steps=1), plain_cond)


def test_context_guidance_is_the_papers_formula(ctx, given):
    """One Euler step to sigma 0 returns the denoised prediction, so the guided output can be
    checked against the branches sampled alone: f(z) + s (f(z; c) - f(z))."""
    context = video_context(ctx, given, [0, 1])
    c_s = ctx["context"].context_input(ctx["predictor"].model.process_latent_in(context.latents), context.mask)
    cond = run(cfg_guider(ctx["predictor"], ctx["guider"].with_context(ctx["positive"], c_s), ctx["negative"], 1.0), steps=1)
    dropped = run(cfg_guider(ctx["predictor"], ctx["guider"].with_context(ctx["positive"], torch.zeros_like(c_s)),
                             ctx["negative"], 1.0), steps=1)
    guided = run(context_guider(ctx, ctx["predictor"], context, cfg=1.0, scale=2.5, keep=False), steps=1)
    assert (cond - dropped).abs().max() > 1e-3
    # batched vs alone differs by float rounding, scaled by s and by 1/0.18215 (the latent scaling)
    torch.testing.assert_close(guided, dropped + 2.5 * (cond - dropped), atol=2e-3, rtol=1e-3)


def test_an_empty_positive_samples_with_context_guidance_as_core_samples_it(ctx, given):
    """Core's CFGGuider samples an empty positive CONDITIONING (a list of no conds); with context
    guidance its two empty branches agree, so any scale gives scale 1's result (it once failed on
    the empty list taken for "no dropped branch")."""
    context = video_context(ctx, given, [0, 1])

    def guider(scale):
        g = ctx["guider"].ContextGuider(ctx["predictor"], context, scale, True)
        g.set_conds([], ctx["negative"])
        g.set_cfg(3.0)
        return g

    assert torch.equal(run(guider(1.5), steps=1), run(guider(1.0), steps=1))


def test_all_branches_run_in_one_batched_forward(ctx, given):
    applied = ctx["patch"].applied_adapters(ctx["predictor"])[0]
    rows = []
    handle = applied.adapter.slot("input_blocks.1.0").register_forward_hook(lambda m, args, out: rows.append(args[0].shape[0]))
    try:
        run(context_guider(ctx, ctx["predictor"], video_context(ctx, given, [0, 1]), cfg=3.0, scale=2.0), steps=1)
    finally:
        handle.remove()
    assert rows == [3 * FRAMES]  # negative, positive, context-dropped: one forward


def test_given_frames_come_out_unchanged_when_kept(ctx, given):
    out = run(context_guider(ctx, ctx["predictor"], video_context(ctx, given, [0, 3]), keep=True))
    assert torch.equal(out[[0, 3]], given)
    assert (out[[1, 2, 4, 5]]).abs().max() > 0.1


def test_frames_a_users_noise_mask_leaves_out_come_back_as_they_went_in(ctx, given):
    """Core's Set Latent Noise Mask → SamplerCustomAdvanced with the Context Guider node's GUIDER:
    the given frames' mask is added to the user's, not put in its place. Frames the user masked out
    of denoising come back as they went in (with the user's mask dropped they were resampled), the
    given frames are kept, and the frames left to denoise are sampled."""
    import comfy.samplers
    import nodes
    from comfy_extras.nodes_custom_sampler import Noise_RandomNoise, SamplerCustomAdvanced

    guider = ctx["nodes"].guidance.ContextGuiderNode.execute(
        model=ctx["predictor"], positive=ctx["positive"], negative=ctx["negative"],
        context=video_context(ctx, given, [0, 1]), cfg=3.0, context_scale=1.0, keep_given_frames=True,
        if_no_context_encoder="error").result[0]
    torch.manual_seed(21)
    start = torch.randn(FRAMES, 4, 8, 8)
    mask = torch.ones(FRAMES, 64, 64)
    mask[4:] = 0.0   # the last two frames: not to be denoised
    latent = nodes.SetLatentNoiseMask().set_mask({"samples": start}, mask)[0]
    sigmas = comfy.samplers.calculate_sigmas(ctx["predictor"].get_model_object("model_sampling"), "normal", 2).cpu()
    with torch.inference_mode():
        out = SamplerCustomAdvanced.execute(Noise_RandomNoise(3), guider, comfy.samplers.sampler_object("euler"),
                                            sigmas, latent).result[0]["samples"]
    torch.testing.assert_close(out[4:], start[4:], atol=1e-5, rtol=1e-5)
    assert torch.equal(out[:2], given)
    assert (out[2:4] - start[2:4]).abs().max() > 0.1


def test_an_adapter_without_a_context_encoder_refuses_a_context(ctx, given, caplog):
    context = video_context(ctx, given, [0, 1])
    node = ctx["nodes"].guidance.ContextGuiderNode
    with pytest.raises(ctx["context"].ContextError, match="no applied temporal adapter has a context encoder.*'plain'"):
        node.execute(model=ctx["plain"], positive=ctx["positive"], negative=ctx["negative"], context=context, cfg=3.0,
                     context_scale=1.0, keep_given_frames=True, if_no_context_encoder="error")
    with caplog.at_level("WARNING", logger="videoldm"):
        ignoring = node.execute(model=ctx["plain"], positive=ctx["positive"], negative=ctx["negative"], context=context,
                                cfg=3.0, context_scale=1.0, keep_given_frames=True, if_no_context_encoder="ignore").result[0]
    assert "neither read nor kept (keep_given_frames has no effect)" in caplog.text
    assert torch.equal(run(ignoring), run(cfg_guider(ctx["plain"], ctx["positive"], ctx["negative"], 3.0)))


def test_a_context_of_another_familys_vae_is_refused_when_the_guider_is_made(ctx, given):
    """Frames encoded by a 16-channel VAE for a 4-channel model: named by the node, not a conv error
    at the first step (the latent sampled would be checked against the context, not the model)."""
    context = video_context(ctx, torch.randn(2, 16, 8, 8), [0, 1])
    node = ctx["nodes"].guidance.ContextGuiderNode
    with pytest.raises(ctx["context"].ContextError, match=r"Context Guider: context: the model's latents have 4 "
                                                          r"channels, found 16"):
        node.execute(model=ctx["predictor"], positive=ctx["positive"], negative=ctx["negative"], context=context,
                     cfg=3.0, context_scale=1.0, keep_given_frames=True, if_no_context_encoder="error")


@pytest.mark.parametrize("shape, message", [((FRAMES, 4, 16, 16), "height 8 vs 16"), ((FRAMES, 8, 8, 8), "channels 4 vs 8"),
                                            ((FRAMES + 2, 4, 8, 8), "frames 6 vs 8")])
def test_context_latents_of_another_size_are_refused_before_sampling(ctx, given, shape, message):
    steps = []
    g = context_guider(ctx, ctx["predictor"], video_context(ctx, given, [0, 1]))
    with pytest.raises(ctx["context"].ContextError, match=message):
        import comfy.samplers
        sigmas = comfy.samplers.calculate_sigmas(g.model_patcher.get_model_object("model_sampling"), "normal", 2)
        g.sample(torch.zeros(shape), torch.zeros(shape), comfy.samplers.sampler_object("euler"), sigmas,
                 callback=lambda *a: steps.append(1), disable_pbar=True)
    assert steps == []


def test_video_context_node_places_latents_and_images(ctx, given):
    node = ctx["nodes"].context.VideoContextNode
    context, latent = node.execute(length=8, positions="0, -1", frames={"samples": given}).result
    assert context.positions == (0, 7) and torch.equal(latent["samples"][[0, 7]], given)
    images = torch.rand(3, 64, 64, 3)
    context, latent = node.execute(length=8, positions="start", images=images, vae=ctx["vae"], use_last=2).result
    assert context.positions == (0, 1)
    torch.testing.assert_close(context.latents[:2], ctx["vae"].encode(images[1:]), atol=1e-4, rtol=1e-4)  # batch of 3 vs 2
    with pytest.raises(ctx["context"].ContextError, match="S < T"):
        node.execute(length=2, positions="start", frames={"samples": given})
    # no given frame: the guider would sample unconditioned without a word (core's VAE encodes none to None)
    with pytest.raises(ctx["context"].ContextError, match="Video Context: frames: expected at least 1 given frame, found 0"):
        node.execute(length=8, positions="start", frames={"samples": given[:0]})
    with pytest.raises(ctx["context"].ContextError, match="Video Context: images: expected at least 1 given frame, found 0"):
        node.execute(length=8, positions="start", images=images[:0], vae=ctx["vae"])


def test_use_last_takes_the_last_frames_of_a_latent(ctx):
    """use_last N on a LATENT (an earlier segment's output, say) places its last N frames, as it does
    for IMAGE frames: the frames the new video continues from, not the first ones of the old."""
    node = ctx["nodes"].context.VideoContextNode
    frames = torch.arange(5, dtype=torch.float32)[:, None, None, None].expand(5, 4, 8, 8).clone()   # frame i holds i
    context, latent = node.execute(length=8, positions="start", frames={"samples": frames}, use_last=2).result
    assert context.positions == (0, 1)
    assert torch.equal(context.latents[:2], frames[3:]) and torch.equal(latent["samples"][:2], frames[3:])


@pytest.mark.parametrize("inputs, message", [
    (dict(length=8, positions="0, 9"), "context positions must lie in 0..7, found [9]"),
    (dict(length=8, positions="0, -9"), "context positions must lie in 0..7"),
    (dict(length=8, positions="1, 1"), "context positions must be distinct"),
    (dict(length=8, positions="first"), "expected positions 'start', 'end' or comma-separated frame indices"),
    (dict(length=4, positions="end", use_last=4), "S < T"),
    (dict(length=8, positions="start", use_last=-1), "use_last must be at least 0"),
    (dict(length=8, positions="0, 1", use_last=3), "3 context frames need 3 positions, found 2"),
    (dict(length=1, positions="start"), "length must be at least 2")])
def test_video_context_refuses_positions_that_cannot_fit_at_validation(ctx, inputs, message):
    """Before the nodes upstream make the frames; what depends on how many frames come is checked when it runs."""
    node = ctx["nodes"].context.VideoContextNode
    answer = node.validate_inputs(**inputs)
    assert isinstance(answer, str) and message in answer
    for fine in (dict(length=8, positions="0, -1"), dict(length=8, positions="start"), dict(length=8, positions="end",
                 use_last=2), dict(length=None, positions="0, 99"), dict(length=8, positions=None)):   # None: linked
        assert node.validate_inputs(**fine) is True, fine


def test_video_context_encodes_only_the_frames_it_uses_and_refuses_non_finite_ones(ctx, given, monkeypatch):
    node, vae = ctx["nodes"].context.VideoContextNode, ctx["vae"]
    encoded, encode = [], vae.encode
    monkeypatch.setattr(vae, "encode", lambda pixels: (encoded.append(pixels.shape[0]), encode(pixels))[1])
    node.execute(length=8, positions="start", images=torch.rand(40, 64, 64, 3), vae=vae, use_last=2)
    assert encoded == [2]
    bad = given.clone()
    bad[1, 0, 0, 0] = float("inf")
    with pytest.raises(Exception, match="Video Context: frames holds 1 NaN"):
        node.execute(length=8, positions="start", frames={"samples": bad})
    images = torch.rand(3, 64, 64, 3)
    images[0, 0, 0, 0] = float("nan")
    with pytest.raises(Exception, match="Video Context: images holds 1 NaN"):
        node.execute(length=8, positions="start", images=images, vae=vae)
    assert encoded == [2]   # refused before the VAE
    with pytest.raises(ctx["context"].ContextError, match="S < T"):   # 50 images for 4 frames: none encoded
        node.execute(length=4, positions="start", images=torch.rand(50, 64, 64, 3), vae=vae)
    assert encoded == [2]
    # an fp16 VAE that overflows: refused, not carried into c_S
    monkeypatch.setattr(vae, "encode", lambda pixels: torch.full((pixels.shape[0], 4, 8, 8), float("nan")))
    with pytest.raises(Exception, match=r"Video Context: images \(as the VAE encoded them\) holds 512 NaN"):
        node.execute(length=8, positions="start", images=torch.rand(2, 64, 64, 3), vae=vae)


def test_video_context_checks_its_two_latents_against_the_memory_limit_before_making_them(ctx, given, monkeypatch):
    monkeypatch.setenv("VIDEOLDM_MAX_OUTPUT_GIB", "0.001")   # about 1 MiB, read per call
    node = ctx["nodes"].context.VideoContextNode
    frame = given[0].numel() * 4
    length = int(0.001 * 2**30) // (2 * frame) + 1   # two latents of `length` frames just above the limit
    with pytest.raises(Exception, match=rf"Video Context: length={length} imply .* for two latents of {length} frames"):
        node.execute(length=length, positions="start", frames={"samples": given[:1]})
    node.execute(length=length - 1, positions="start", frames={"samples": given[:1]})


def extend(ctx, model, video, segments, length=4, context_frames=2, **kw):
    node = ctx["nodes"].rollout.ExtendVideo
    args = dict(seed=1, steps=1, cfg=1.0, context_scale=1.0, sampler_name="euler", scheduler="normal") | kw
    with torch.inference_mode():
        return node.execute(model=model, positive=ctx["positive"], negative=ctx["negative"], video={"samples": video},
                            segments=segments, segment_length=length, context_frames=context_frames,
                            **args).result[0]["samples"]


def test_extend_video_rolls_out_from_one_frame(ctx, given, pack_module):
    rollout = pack_module("videoldm_core.rollout")
    out = extend(ctx, ctx["predictor"], given[:1], segments=3, length=4, context_frames=2)
    assert out.shape[0] == rollout.rollout_length(1, 4, 2, 3) == 1 + 3 + 2 + 2
    assert torch.equal(out[:1], given[:1])
    assert torch.isfinite(out).all() and out[1:].abs().max() > 0.1


def test_extend_video_segments_continue_from_the_last_frames(ctx, given):
    """Segment 2 of a 2-segment rollout is segment 1 of a rollout started from the video after segment 1."""
    first = extend(ctx, ctx["predictor"], given[:1], segments=1, length=4)
    two = extend(ctx, ctx["predictor"], given[:1], segments=2, length=4)
    assert torch.equal(two[:4], first)
    again = extend(ctx, ctx["predictor"], first, segments=1, length=4, seed=2)
    torch.testing.assert_close(two, again, atol=1e-5, rtol=1e-5)


def test_extend_video_guides_every_segment_with_its_context_scale(ctx, given, pack_module, monkeypatch):
    """The node's context_scale is the context guidance s of each segment (dropped, every segment
    sampled at s = 1 whatever the widget said): s = 2 samples other frames than s = 1, and each
    segment's sampling is asked for s = 2."""
    rollout = pack_module("host.rollout")
    one = extend(ctx, ctx["predictor"], given[:2], segments=2, length=4, context_scale=1.0)
    real, scales = rollout.sample_with_context, []

    def spy(*args, **kw):
        scales.append(kw.get("context_scale", 1.0))
        return real(*args, **kw)

    monkeypatch.setattr(rollout, "sample_with_context", spy)
    two = extend(ctx, ctx["predictor"], given[:2], segments=2, length=4, context_scale=2.0)
    assert scales == [2.0, 2.0]
    assert one.shape == two.shape and torch.equal(two[:2], given[:2])
    assert (two[2:] - one[2:]).abs().max() > 1e-3


def test_the_largest_seed_rolls_out_past_the_first_segment(ctx, given):
    """The seed widget reaches 2^64 − 1; segment i samples with seed + i modulo 2^64."""
    top = extend(ctx, ctx["predictor"], given[:1], segments=2, length=4, seed=2**64 - 1)
    again = extend(ctx, ctx["predictor"], top[:4], segments=1, length=4, seed=0)
    torch.testing.assert_close(top, again, atol=1e-5, rtol=1e-5)


def test_each_segment_is_the_context_guider_on_the_last_frames_with_seed_plus_its_index(ctx, given, pack_module):
    """An oracle for the rollout's frame bookkeeping: segment k is one Context Guider run on the video's
    last S frames placed at 0..S-1, noise prepare_noise(seed + k), and the output is the input video
    followed by each segment's new frames (a segment shifted by one frame fails this)."""
    import comfy.sample
    import comfy.samplers

    guidance, context_module = pack_module("host.guidance"), pack_module("videoldm_core.context")
    sampling = pack_module("host.sampling")
    model, length, s, seed = ctx["predictor"], 4, 2, 5
    out = extend(ctx, model, given[:3], segments=2, length=length, context_frames=s, seed=seed)
    video = given[:3].clone()
    sampler, sigmas = sampling.sampler_and_sigmas(model, "euler", "normal", 1)
    for k in range(2):
        context = context_module.VideoContext(context_module.place_frames(video[-s:], range(s), length), tuple(range(s)))
        with torch.inference_mode():
            segment = guidance.sample_with_context(model, ctx["positive"], ctx["negative"], context, sampler, sigmas,
                                                   1.0, comfy.sample.prepare_noise(context.latents, seed + k), seed + k,
                                                   lambda *a: None)
        assert torch.equal(segment[:s], video[-s:])
        video = torch.cat([video, segment[s:]])
    assert out.shape == video.shape
    torch.testing.assert_close(out, video, atol=1e-5, rtol=1e-5)


def test_previews_show_a_frame_being_made_not_a_given_one(ctx, given, monkeypatch):
    """Each step's preview is x0's first frame that is not given: frame 0 of a segment is a context
    frame, kept out of the denoising, and would show the same picture at every step."""
    import latent_preview

    previewed = []

    class Recording:
        def decode_latent_to_preview_image(self, format, x0):
            previewed.append(x0.clone())
            return None

    monkeypatch.setattr(latent_preview, "get_previewer", lambda device, latent_format: Recording())
    out = extend(ctx, ctx["predictor"], given[:2], segments=2, length=4, context_frames=2, steps=2)
    assert len(previewed) == 4 and all(p.shape[0] == 1 for p in previewed)
    assert not torch.equal(previewed[0], previewed[1])          # the frame changes from step to step
    for i, p in enumerate(previewed):                            # and is never its segment's given frame
        context = out[:2] if i < 2 else out[2:4]
        assert all(not torch.equal(p[0], frame) for frame in context)


@pytest.mark.parametrize("segments, length, context_frames, message", [
    (0, 4, 2, "Extend Video: segments must be at least 1, found 0"), (2, 4, 4, "smaller than the segment length"),
    (2, 4, 5, "smaller than the segment length")])
def test_extend_video_bad_input(ctx, given, pack_module, segments, length, context_frames, message):
    with pytest.raises(pack_module("videoldm_core.errors").VideoLDMError, match=message):
        extend(ctx, ctx["predictor"], given[:1], segments, length, context_frames)


def test_extend_video_refuses_a_video_it_cannot_continue_before_sampling(ctx, given, pack_module, monkeypatch):
    monkeypatch.setattr(pack_module("host.rollout"), "sample_with_context", lambda *a, **k: pytest.fail("sampled"))
    error = pack_module("videoldm_core.errors").VideoLDMError
    bad = given[:2].clone()
    bad[0, 0, 0, 0] = float("nan")
    for video, message in ((bad, r"Extend Video: video holds 1 NaN or infinite values"),
                           (given[:2, None], r"Extend Video: video: expected image latents \(frames, channels, height, width\)"),
                           (given[:2].repeat(1, 4, 1, 1), "Extend Video: video: the model's latents have 4 channels, found 16")):
        with pytest.raises(error, match=message):
            extend(ctx, ctx["predictor"], video, 2)
    for sigmas in ([], [14.6], [14.6, float("nan")]):
        with pytest.raises(error, match="the SIGMAS input: expected a schedule of at least 2 finite sigmas"):
            extend(ctx, ctx["predictor"], given[:2], 2, sigmas=torch.tensor(sigmas))


def test_extend_video_warns_for_each_context_count_the_adapter_was_not_trained_with(ctx, given, caplog, tiny_sd1):
    """From one frame the first segment sees 1 context frame, the later ones 2: an adapter trained
    with 2 only is warned about for the first."""
    spec, module = ctx["patch"].fresh_adapter_for_model(tiny_sd1[0], context_frames=(2,), context_width=16)
    only_two = ctx["patch"].apply_adapter(tiny_sd1[0], ctx["patch"].build_adapter_patcher(
        spec, module.state_dict(), source="test"), "only-two")
    with caplog.at_level("WARNING", logger="videoldm"):
        extend(ctx, only_two, given[:1], segments=2)
    assert "adapter 'only-two' was trained with [2] context frames, given 1." in caplog.text
    assert "given 2." not in caplog.text


def test_extend_video_needs_a_context_encoder(ctx, given):
    with pytest.raises(ctx["context"].ContextError, match="no applied temporal adapter has a context encoder"):
        extend(ctx, ctx["plain"], given[:1], 2)


def test_core_context_windows_slice_the_context_with_the_anchor_frame(ctx, given):
    """ContextWindowsManual over 10 frames, windows of 4: c_S is sliced like x (anchor included),
    so each window's layers see their own frames; the first window holds the given frames."""
    from comfy_extras.nodes_context_windows import ContextWindowsManualNode

    windowed = ContextWindowsManualNode.execute(ctx["predictor"], context_length=4, context_overlap=1,
                                                context_schedule="standard_static", context_stride=1, closed_loop=False,
                                                fuse_method="pyramid", dim=0, freenoise=False).result[0]
    seen = []
    encoder = ctx["patch"].applied_adapters(windowed)[0].adapter.context_encoder
    handle = encoder.register_forward_pre_hook(lambda m, args: seen.append(args[0][:, -1, 0, 0].tolist()))
    try:
        out = run(context_guider(ctx, windowed, video_context(ctx, given, [0, 1], frames=10), cfg=1.0), frames=10, steps=1)
    finally:
        handle.remove()
    assert out.shape[0] == 10 and torch.isfinite(out).all()
    assert [1.0, 1.0, 0.0, 0.0] in seen          # the first window: its mask marks frames 0 and 1
    assert any(len(m) == 5 for m in seen)        # later windows carry the anchor frame too
    assert torch.equal(out[:2], given)
    handler = windowed.model_options["context_handler"]   # the Context Windows node's: not changed
    assert "videoldm_temporal_adapters" not in str(handler.callbacks)


def test_core_context_windows_retain_the_given_start_frame_in_every_window_when_asked(ctx, given):
    """cond_retain_index_list '0' (core's tooltip: the start image at sub-position 0 of every window)
    applies to c_S as to every other cond: each window's encoder sees frame 0 given."""
    from comfy_extras.nodes_context_windows import ContextWindowsManualNode

    def masks_seen(retain):
        windowed = ContextWindowsManualNode.execute(
            ctx["predictor"], context_length=4, context_overlap=1, context_schedule="standard_static", context_stride=1,
            closed_loop=False, fuse_method="pyramid", dim=0, freenoise=False, cond_retain_index_list=retain,
            causal_window_fix=False).result[0]
        seen = []
        encoder = ctx["patch"].applied_adapters(windowed)[0].adapter.context_encoder
        handle = encoder.register_forward_pre_hook(lambda m, args: seen.append(args[0][:, -1, 0, 0].tolist()))
        try:
            run(context_guider(ctx, windowed, video_context(ctx, given, [0, 1], frames=10), cfg=1.0), frames=10, steps=1)
        finally:
            handle.remove()
        return seen

    assert masks_seen("") == [[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]
    assert masks_seen("0") == [[1.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]]


def test_an_area_cond_gets_the_context_frames_of_its_area(ctx, given):
    """ConditioningSetArea beside a full-frame prompt: core crops x to the area for that cond, and
    c_S is cropped with it (before, the full-size c_S did not line up and sampling stopped)."""
    import comfy.patcher_extension

    context = video_context(ctx, given, [0, 1])
    full = ctx["context"].context_input(ctx["predictor"].model.process_latent_in(context.latents), context.mask)
    seen = []

    def record(executor, x, timesteps, context, y, control, transformer_options, **kwargs):
        call = transformer_options.get("videoldm_context")   # after the pack's wrapper took c_S in
        seen.append((tuple(x.shape), None if call is None else call.c_s.detach().clone()))
        return executor(x, timesteps, context, y, control, transformer_options, **kwargs)

    model = ctx["predictor"].clone()
    model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "test_record", record)
    area = [[t, {**o, "area": (4, 4, 2, 4), "strength": 1.0, "set_area_to_bounds": False}] for t, o in ctx["positive"]]
    out = run(context_guider(ctx, model, context, positive=ctx["positive"] + area))
    plain = run(context_guider(ctx, ctx["predictor"], context))
    assert out.shape == plain.shape and (out - plain).abs().max() > 1e-4, "the area cond changed nothing"
    cropped = [c_s for shape, c_s in seen if shape[-2:] == (4, 4) and c_s is not None]
    assert cropped, "no model call saw the area with its context frames"
    for c_s in cropped:
        assert torch.equal(c_s[:FRAMES], full[:, :, 2:6, 4:8].to(c_s))
