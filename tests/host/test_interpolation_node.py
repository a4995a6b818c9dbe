"""Interpolate Keyframes in a real ComfyUI on a tiny SD1.x model with random-weight interpolation
adapters (made-up numbers, real paths)."""

import dataclasses

import pytest
import torch


@pytest.fixture(scope="module")
def interp(pack_module, tiny_sd1):
    patch = pack_module("host.temporal_adapter")
    model, clip, _ = tiny_sd1

    def applied(name, seed=0, regimes=2, **options):
        spec, module = patch.fresh_adapter_for_model(model, context_width=16, **options)
        if regimes != 2:   # an adapter trained with fewer regime labels than the trainer's default
            spec = dataclasses.replace(spec, interpolation={**spec.interpolation, "regimes": regimes})
            module = pack_module("videoldm_core.temporal_adapter").TemporalAdapter(spec)
        torch.manual_seed(seed)
        for p in module.parameters():
            torch.nn.init.normal_(p, std=0.05)
        return patch.apply_adapter(model, patch.build_adapter_patcher(spec, module.state_dict(), source="test"), name)

    return dict(
        with_labels=applied("interpolator", context_frames=(0, 1, 2), interpolation=True),
        one_regime=applied("one-regime", context_frames=(0, 1, 2), interpolation=True, regimes=1),
        without_labels=applied("masks-only", context_frames=(0, 1, 2)),
        plain=applied("plain"),
        positive=clip.encode_from_tokens_scheduled(clip.tokenize("a red square moving left")),
        negative=clip.encode_from_tokens_scheduled(clip.tokenize("")),
        node=pack_module("nodes.interpolation").InterpolateKeyframes,
        error=pack_module("videoldm_core.interpolation").InterpolationError,
    )


def interpolate(interp, model, keyframes, regime="T-to-4T", keep=True, window=5, fps=2.0, augmentation=0.0, seed=0):
    with torch.inference_mode():
        latent, new_fps = interp["node"].execute(model=model, positive=interp["positive"], negative=interp["negative"],
                                                 keyframes={"samples": keyframes}, regime=regime, keep_keyframes=keep,
                                                 augmentation=augmentation, window_keyframes=window, seed=seed, steps=1,
                                                 cfg=2.0, sampler_name="euler", scheduler="normal", fps=fps).result
    return latent["samples"], new_fps


def keyframes(t, seed=0, size=8):
    torch.manual_seed(seed)
    return torch.randn(t, 4, size, size)


@pytest.mark.parametrize("t", [2, 3, 17])
def test_output_has_4t_minus_3_frames_with_the_keyframes_kept(interp, t):
    k = keyframes(t)
    dense, fps = interpolate(interp, interp["with_labels"], k)
    assert dense.shape == (4 * t - 3, 4, 8, 8) and fps == 8.0
    torch.testing.assert_close(dense[::4], k, atol=1e-6, rtol=1e-6)
    between = [i for i in range(4 * t - 3) if i % 4]
    assert dense[between].abs().max() > 0.1


def test_chaining_twice_gives_16t_minus_15_frames(interp):
    once, fps = interpolate(interp, interp["with_labels"], keyframes(3))
    twice, fps2 = interpolate(interp, interp["with_labels"], once, regime="4T→16T", fps=fps)   # a saved graph's name
    assert twice.shape[0] == 16 * 3 - 15 and fps2 == 4 * fps == 32.0
    torch.testing.assert_close(twice[::16], keyframes(3), atol=1e-6, rtol=1e-6)


def test_the_regime_label_reaches_the_temporal_layers(interp):
    k = keyframes(3)
    first, _ = interpolate(interp, interp["with_labels"], k, regime="T-to-4T")
    second, _ = interpolate(interp, interp["with_labels"], k, regime="4T-to-16T")
    assert (first - second).abs().max() > 1e-3


def test_the_augmentation_level_reaches_the_model(interp):
    k = keyframes(3)
    a, _ = interpolate(interp, interp["with_labels"], k, augmentation=0.0)
    b, _ = interpolate(interp, interp["with_labels"], k, augmentation=0.3)
    assert (a - b).abs().max() > 1e-3
    torch.testing.assert_close(b[::4], k, atol=1e-6, rtol=1e-6)  # augmentation is on what the model sees only


def test_the_keyframes_the_model_reads_are_noised_at_the_augmentation_level(interp, pack_module):
    """Conditioning augmentation gives the model z + level·ε as its keyframes in c_S, not only the
    level label: an adapter without the level embedding reads no label, so with the noise left out
    levels 0 and 0.3 sampled the same frames. What its context encoder reads differs from level 0's
    by noise of standard deviation 0.3 on the keyframes and by nothing on the frames between."""
    model, k = interp["without_labels"], keyframes(3)
    encoder = pack_module("host.temporal_adapter").applied_adapters(model)[0].adapter.context_encoder
    seen = {}

    def read(level):
        calls = []
        handle = encoder.register_forward_pre_hook(lambda m, args: calls.append(args[0].detach().clone()))
        try:
            out, _ = interpolate(interp, model, k, augmentation=level)
        finally:
            handle.remove()
        seen[level] = calls[0]
        return out

    plain, augmented = read(0.0), read(0.3)
    assert (plain - augmented).abs().max() > 1e-3
    torch.testing.assert_close(augmented[::4], k, atol=1e-6, rtol=1e-6)   # the kept keyframes are not noised
    noise = (seen[0.3] - seen[0.0])[:9, :4]   # one window of 9 frames; the mask channel is the last
    assert noise[[1, 2, 3, 5, 6, 7]].abs().max() == 0
    assert 0.25 < noise[::4].std().item() < 0.35


def test_an_augmentation_level_outside_the_trained_range_is_warned_about(interp, caplog):
    with caplog.at_level("WARNING", logger="videoldm"):
        interpolate(interp, interp["with_labels"], keyframes(2), augmentation=0.2)
        assert "trained with augmentation levels" not in caplog.text
        interpolate(interp, interp["with_labels"], keyframes(2), augmentation=0.5)
    assert "adapter 'interpolator' was trained with augmentation levels in [0, 0.25], given 0.5." in caplog.text


def test_the_augmentation_noise_is_independent_of_the_sampler_noise(interp, pack_module, monkeypatch):
    """Training draws the keyframes' augmentation noise apart from the diffusion noise; sampling must
    too (seeded alike, the two were the same numbers: the model saw x − c_S = (σ − level)·ε)."""
    host = pack_module("host.interpolation")
    real, seen = host.sample_with_context, []

    def spy(model, positive, negative, context, sampler, sigmas, cfg, noise, *args, **kw):
        ones = torch.ones_like(context.latents)
        seen.append((noise.flatten(), ((kw["augment"](ones) - ones) / 0.125).flatten()))
        return real(model, positive, negative, context, sampler, sigmas, cfg, noise, *args, **kw)

    monkeypatch.setattr(host, "sample_with_context", spy)
    interpolate(interp, interp["with_labels"], keyframes(3), augmentation=0.125, seed=7, window=2)
    assert len(seen) == 2
    for noise, eps in seen:
        assert abs(torch.corrcoef(torch.stack([noise, eps]))[0, 1]) < 0.1


def test_the_largest_seed_and_a_noise_input_reach_every_window(interp):
    from comfy_extras.nodes_custom_sampler import Noise_RandomNoise

    k = keyframes(3)
    top, _ = interpolate(interp, interp["with_labels"], k, augmentation=0.3, seed=2**64 - 1, window=2)   # window 1: seed 0
    assert top.shape[0] == 9 and torch.isfinite(top).all()

    def with_noise(seed):
        with torch.inference_mode():
            return interp["node"].execute(model=interp["with_labels"], positive=interp["positive"],
                                          negative=interp["negative"], keyframes={"samples": k}, regime="T-to-4T",
                                          keep_keyframes=True, augmentation=0.3, window_keyframes=2, seed=seed, steps=1,
                                          cfg=2.0, sampler_name="euler", scheduler="normal", fps=2.0,
                                          noise=Noise_RandomNoise(9)).result[0]["samples"]

    assert torch.equal(with_noise(1), with_noise(2))   # the NOISE's seed replaces the node's, augmentation included


def test_keyframes_it_cannot_interpolate_are_refused_before_sampling(interp, pack_module, monkeypatch):
    monkeypatch.setattr(pack_module("host.interpolation"), "sample_with_context", lambda *a, **k: pytest.fail("sampled"))
    error = pack_module("videoldm_core.errors").VideoLDMError
    bad = keyframes(3)
    bad[2, 1, 0, 0] = float("nan")
    with pytest.raises(error, match="Interpolate Keyframes: keyframes holds 1 NaN or infinite values"):
        interpolate(interp, interp["with_labels"], bad)
    with pytest.raises(error, match="Interpolate Keyframes: keyframes: the model's latents have 4 channels, found 16"):
        interpolate(interp, interp["with_labels"], keyframes(3).repeat(1, 4, 1, 1))


def test_an_adapter_trained_with_one_regime_refuses_the_second_before_sampling(interp):
    dense, _ = interpolate(interp, interp["one_regime"], keyframes(2))
    assert dense.shape[0] == 5
    with pytest.raises(interp["error"], match="'one-regime' was trained with 1 regime label\\(s\\) \\['T-to-4T'\\], not '4T-to-16T'"):
        interpolate(interp, interp["one_regime"], keyframes(2), regime="4T-to-16T")


def test_an_adapter_without_the_label_refuses_the_second_regime(interp):
    dense, _ = interpolate(interp, interp["without_labels"], keyframes(2))
    assert dense.shape[0] == 5
    with pytest.raises(interp["error"], match="'4T-to-16T' needs an adapter with the regime label.*'masks-only'"):
        interpolate(interp, interp["without_labels"], keyframes(2), regime="4T→16T")


def test_windows_join_at_the_shared_keyframe(interp):
    k = keyframes(9)
    dense, _ = interpolate(interp, interp["with_labels"], k, window=3)
    assert dense.shape[0] == 33 and torch.isfinite(dense).all()
    torch.testing.assert_close(dense[::4], k, atol=1e-6, rtol=1e-6)


def test_each_window_is_the_context_guider_on_its_keyframes_at_every_fourth_frame(interp, pack_module):
    """An oracle for the windows' bookkeeping: window i is one Context Guider run on its keyframes placed
    at 0, 4, 8, ... of 4·count − 3 frames, with noise prepare_noise(seed + i), the regime label and level
    on every frame, and augmentation noise from independent_seed(seed + i); the output is window 0
    followed by each later window without the keyframe it shares (a window shifted by one keyframe, a
    swapped seed or a dropped label fails this)."""
    import comfy.sample

    guidance, sampling = pack_module("host.guidance"), pack_module("host.sampling")
    core = pack_module("videoldm_core.context")
    labels = pack_module("videoldm_core.interpolation")
    model, k, seed, level = interp["with_labels"], keyframes(4, seed=3), 11, 0.2
    out, _ = interpolate(interp, model, k, regime="4T-to-16T", window=3, augmentation=level, seed=seed)
    sampler, sigmas = sampling.sampler_and_sigmas(model, "euler", "normal", 1)
    pieces = []
    for i, (first, count) in enumerate([(0, 3), (2, 2)]):
        length = 4 * count - 3
        context = core.VideoContext(core.place_frames(k[first:first + count], range(0, length, 4), length),
                                    tuple(range(0, length, 4)))
        generator = torch.Generator().manual_seed(sampling.independent_seed(seed + i))
        with torch.inference_mode():
            window = guidance.sample_with_context(
                model, interp["positive"], interp["negative"], context, sampler, sigmas, 2.0,
                comfy.sample.prepare_noise(context.latents, seed + i), seed + i, lambda *a: None,
                labels=labels.interpolation_labels(length, 1, level),
                augment=lambda z, g=generator: labels.augment_keyframes(z, level, g))
        assert torch.equal(window[::4], k[first:first + count])
        pieces.append(window if i == 0 else window[1:])
    expected = torch.cat(pieces)
    assert out.shape == expected.shape == (13, 4, 8, 8)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    plain, _ = interpolate(interp, model, k, regime="T-to-4T", window=3, augmentation=level, seed=seed)
    assert (plain - out).abs().max() > 1e-3   # the label the oracle passes makes a difference


def test_bad_input_is_refused_before_sampling(interp):
    with pytest.raises(interp["error"], match="at least 2 keyframes"):
        interpolate(interp, interp["with_labels"], keyframes(1))
    from comfy.nested_tensor import NestedTensor

    mixed = NestedTensor([torch.zeros(2, 4, 8, 8), torch.zeros(2, 4, 16, 16)])
    with pytest.raises(interp["error"], match="one size"):
        interpolate(interp, interp["with_labels"], mixed)
    with pytest.raises(interp["error"], match="interpolation adapter applied.*'plain'"):
        interpolate(interp, interp["plain"], keyframes(2))
    with pytest.raises(interp["error"], match="regime in"):
        interpolate(interp, interp["with_labels"], keyframes(2), regime="8x")


def test_regime_names_are_plain_ascii_and_the_earlier_names_still_validate(node_classes):
    node = node_classes["VideoLDMInterpolateKeyframes"]
    [regime] = [i for i in node.define_schema().inputs if i.id == "regime"]
    assert regime.options == ["T-to-4T", "4T-to-16T"] and all(o.isascii() for o in regime.options)
    assert node.validate_inputs(regime="T-to-4T") is True and node.validate_inputs(regime="4T→16T") is True
    assert node.validate_inputs(regime="8x") == "regime '8x' not in list ['T-to-4T', '4T-to-16T']"
    # linked (a switch or a primitive's output feeding the combo): None at validation, checked when it runs
    assert node.validate_inputs(regime=None) is True


def test_a_linked_temporal_decoder_name_is_looked_up_when_it_runs(node_classes):
    node = node_classes["VideoLDMLoadTemporalVAE"]
    assert node.validate_inputs(None) is True and node.validate_inputs("none") is True
    assert "found no file 'missing.safetensors'" in node.validate_inputs("missing.safetensors")


def test_augmentation_between_the_sentinel_and_zero_is_refused_before_the_graph_runs(interp, node_classes):
    node = node_classes["VideoLDMInterpolateKeyframes"]
    for level in (-1.0, 0.0, 0.3, 1.0, None):   # None: a linked value, checked when the node runs
        assert node.validate_inputs(regime="T-to-4T", augmentation=level) is True
    for level in (-0.99, -0.5, -0.01):   # inside the widget's range, which starts at the sentinel
        assert "expected -1 (the adapter's own level) or a level in [0, 1], found" in \
            node.validate_inputs(regime="T-to-4T", augmentation=level)
        with pytest.raises(interp["error"], match="augmentation: expected -1"):   # linked: before any sampling
            interpolate(interp, interp["with_labels"], keyframes(2), augmentation=level)


def test_core_sigmas_and_noise_reach_interpolation(interp):
    import comfy.samplers
    from comfy_extras.nodes_custom_sampler import Noise_RandomNoise

    k = keyframes(3)
    own, _ = interpolate(interp, interp["with_labels"], k, seed=4)
    model = interp["with_labels"]
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "normal", 1).cpu()

    def run(**extra):
        with torch.inference_mode():
            return interp["node"].execute(model=model, positive=interp["positive"], negative=interp["negative"],
                                          keyframes={"samples": k}, regime="T-to-4T", keep_keyframes=True,
                                          augmentation=0.0, window_keyframes=2, seed=4, steps=1, cfg=2.0,
                                          sampler_name="euler", scheduler="normal", fps=2.0, **extra).result[0]["samples"]

    windowed = run()
    assert torch.equal(run(sampler=comfy.samplers.sampler_object("euler"), sigmas=sigmas), windowed)
    other = run(noise=Noise_RandomNoise(9))
    assert (other - windowed).abs().max() > 1e-3
    assert torch.equal(other[::4], windowed[::4])   # the keyframes are kept whatever the noise
    assert own.shape == windowed.shape
