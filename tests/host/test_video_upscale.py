"""Video Upscale on ComfyUI's own SD x4 upscaler architecture at small width (random weights)."""

import re

import pytest
import torch


@pytest.fixture(scope="module")
def x4(pack_module, tiny_sd1, tiny_x4):
    clip = tiny_sd1[1]
    return dict(model=tiny_x4, positive=clip.encode_from_tokens_scheduled(clip.tokenize("a sharp photo")),
                negative=clip.encode_from_tokens_scheduled(clip.tokenize("")),
                node=pack_module("nodes.video_upscale").VideoUpscale, error=pack_module("videoldm_core.video_upscale").TilingError)


def frames(t=4, size=16, seed=0):
    torch.manual_seed(seed)
    base = torch.rand(1, size, size, 3)
    return (base + 0.05 * torch.randn(t, size, size, 3)).clamp(0, 1)


def upscale(x4, images, tile=64, tile_overlap=16, chunk=8, chunk_overlap=2, model=None, cfg=2.0, steps=2, seed=3,
            augmentation=0.1, **extra):
    with torch.inference_mode():
        return x4["node"].execute(model=model or x4["model"], positive=x4["positive"], negative=x4["negative"],
                                  images=images, noise_augmentation=augmentation, seed=seed, steps=steps, cfg=cfg,
                                  scheduler="normal", tile_size=tile, tile_overlap=tile_overlap, chunk_length=chunk,
                                  chunk_overlap=chunk_overlap, **{"sampler_name": "euler", **extra}).result[0]["samples"]


def untiled(x4, images, cfg=2.0, steps=2, augmentation=0.1):
    import comfy.sample

    pixels = images.movedim(-1, 1) * 2.0 - 1.0
    conds = [[[t, {**o, "concat_image": pixels, "noise_augmentation": augmentation}] for t, o in c]
             for c in (x4["positive"], x4["negative"])]
    latent = torch.zeros(images.shape[0], 4, images.shape[1], images.shape[2])
    with torch.inference_mode():
        return comfy.sample.sample(x4["model"], comfy.sample.prepare_noise(latent, 3), steps, cfg, "euler", "normal",
                                   conds[0], conds[1], latent, disable_pbar=True, seed=3)


# 0.001: level 0, which core still augments; 0.102: level 35.7 of 350, which core rounds to 36 (not 35)
@pytest.mark.parametrize("augmentation", [0.1, 0.001, 0.0, 0.102])
def test_one_tile_and_one_chunk_equal_untiled_sampling_exactly_with_frames_held_in_float32(x4, pack_module, monkeypatch,
                                                                                          augmentation):
    monkeypatch.setattr(pack_module("host.video_upscale"), "FRAMES_DTYPE", torch.float32)
    images = frames()
    ours = upscale(x4, images, tile=16, tile_overlap=4, chunk=4, augmentation=augmentation)
    after_ours = torch.rand(4)          # the global generator, left as core's sampling leaves it
    assert torch.equal(ours, untiled(x4, images, augmentation=augmentation))
    assert torch.equal(after_ours, torch.rand(4))


def test_frames_held_in_float16_change_the_result_only_by_their_rounding(x4, pack_module, monkeypatch):
    """The default compact form: the augmented low-res frames in float16 (|rounding| <= 2^-10 of
    the model input's 1 to 2); the sample moves far less than one noise level does."""
    images = frames()
    compact = upscale(x4, images, tile=16, tile_overlap=4, chunk=4)
    exact = untiled(x4, images)
    assert 0 < (compact - exact).abs().max() < 2e-3 * exact.abs().max()
    monkeypatch.setattr(pack_module("host.video_upscale"), "FRAMES_DTYPE", torch.float32)
    other_noise = upscale(x4, images, tile=16, tile_overlap=4, chunk=4, seed=4)
    assert (other_noise - exact).abs().max() > 50 * (compact - exact).abs().max()


def test_tiles_and_chunks_blend_without_visible_seams(x4):
    """Error against untiled sampling at tile/chunk seams, compared with the interior of tiles."""
    images = frames(t=6, size=32)
    reference = untiled(x4, images, steps=1)
    tiled = upscale(x4, images, tile=16, tile_overlap=8, chunk=4, chunk_overlap=2, steps=1)
    assert tiled.shape == reference.shape == (6, 4, 32, 32)
    error = (tiled - reference).abs().mean(dim=(0, 1))   # (H, W)
    seam = torch.zeros(32, 32, dtype=torch.bool)
    for edge in (8, 16, 24):          # tile edges of the 16/8 tiling (starts 0, 8, 16)
        seam[:, edge - 1:edge + 1] = True
        seam[edge - 1:edge + 1, :] = True
    seam_error, interior_error = error[seam].mean().item(), error[~seam].mean().item()
    print(f"seam {seam_error:.4f} interior {interior_error:.4f}")
    assert seam_error < 1.5 * interior_error + 1e-3
    frame_error = (tiled - reference).abs().mean(dim=(1, 2, 3))
    assert frame_error[[1, 2, 3, 4]].mean() < 1.5 * frame_error[[0, 5]].mean() + 1e-3  # chunk seams at 2..3


def test_each_model_call_holds_only_its_regions_state_with_the_frames_in_float16(x4):
    """The compact joint state: what reaches the model (through core's batched call) is a region of
    x, cond and uncond batched, and that region's low-res frames, still float16 (the model casts
    them) and augmented at the node's level (y)."""
    import comfy.patcher_extension

    seen = []

    def spy(executor, x, t, c_concat, c_crossattn, control, transformer_options, **kwargs):
        seen.append((tuple(x.shape), tuple(c_concat.shape), c_concat.dtype, kwargs["y"].unique().tolist()))
        return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)

    model = x4["model"].clone()
    model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, "test_spy", spy)
    upscale(x4, frames(t=4, size=16), tile=8, tile_overlap=4, chunk=2, chunk_overlap=0, steps=1, model=model)
    assert len(seen) == 3 * 3 * 2
    assert {s[0] for s in seen} == {(4, 4, 8, 8)}            # 2 frames x (cond, uncond) of an 8x8 tile
    assert {s[1:3] for s in seen} == {((4, 3, 8, 8), torch.float16)}
    assert {tuple(s[3]) for s in seen} == {(35,)}            # noise_augmentation 0.1 of the upscaler's 350


@pytest.mark.parametrize("noise_input", [False, True])
def test_the_sample_reaches_the_host_after_the_noise_and_frames_are_released(x4, pack_module, monkeypatch, noise_input):
    """On a GPU the host holds no whole-video noise (made on the model's device; a NOISE input's
    draw is not kept) and never the low-res frames beside the output LATENT: both are released when
    the sample is moved to the host (core's intermediate device), and the sample is the same."""
    import weakref

    import comfy.samplers
    from comfy_extras.nodes_custom_sampler import Noise_RandomNoise

    upscaler, sampling = pack_module("host.video_upscale"), pack_module("host.sampling")
    held, seen = {}, {}
    draw, augment, sample = sampling.RunNoise.on_device, upscaler.augmented_frames, comfy.samplers.sample

    def on_device(self, *args):
        if self.stacked is not None:   # a NOISE input's whole draw
            held["draw"] = weakref.ref(self.stacked)
        noise = draw(self, *args)
        held["noise"] = weakref.ref(noise)
        return noise

    def augmented(*args):
        frames = augment(*args)
        held["frames"] = weakref.ref(frames)
        return frames

    class Sample:   # core's sample, seeing what is alive when it is moved to the host
        def __init__(self, tensor):
            self.tensor = tensor

        def to(self, *args, **kwargs):
            seen.update((name, ref() is None) for name, ref in held.items())
            return self.tensor.to(*args, **kwargs)

    images, kw = frames(t=4, size=16), dict(tile=8, tile_overlap=4, chunk=2, chunk_overlap=0, steps=1)
    run = lambda: upscale(x4, images, **kw, **({"noise": Noise_RandomNoise(5)} if noise_input else {}))  # noqa: E731
    expected = run()
    monkeypatch.setattr(sampling.RunNoise, "on_device", on_device)
    monkeypatch.setattr(upscaler, "augmented_frames", augmented)
    monkeypatch.setattr(comfy.samplers, "sample", lambda *a, **kw: Sample(sample(*a, **kw)))
    assert torch.equal(run(), expected)
    assert seen == {"noise": True, "frames": True, **({"draw": True} if noise_input else {})}


def test_area_and_mask_conds_are_refused_when_tiled(x4):
    area = [[t, {**o, "area": (1, 1, 0, 0)}] for t, o in x4["positive"]]
    with pytest.raises(x4["error"], match="cannot place an area, mask or GLIGEN conditioning on each tile"):
        with torch.inference_mode():
            x4["node"].execute(model=x4["model"], positive=area, negative=x4["negative"], images=frames(t=4, size=16),
                               noise_augmentation=0.1, seed=3, steps=1, cfg=2.0, sampler_name="euler",
                               scheduler="normal", tile_size=8, tile_overlap=4, chunk_length=2, chunk_overlap=0)


def test_progress_counts_every_tile_step(x4, monkeypatch):
    """What the node reports: one update per region and step. (ComfyUI forwards updates to the
    client throttled by wall-clock time, so the hook's count depends on the machine's speed.)"""
    import comfy.utils

    reported = []
    original = comfy.utils.ProgressBar.update_absolute

    def record(bar, value, total=None, preview=None):
        reported.append((value, bar.total if total is None else total))
        return original(bar, value, total, preview)

    monkeypatch.setattr(comfy.utils.ProgressBar, "update_absolute", record)
    upscale(x4, frames(t=4, size=16), tile=8, tile_overlap=4, chunk=2, chunk_overlap=0, steps=2)
    regions = 3 * 3 * 2
    assert reported == [(i, 2 * regions) for i in range(1, 2 * regions + 1)]
    reported.clear()   # heun calls the model twice a step (3 calls in 2 steps): the bar rises to its total, not past
    upscale(x4, frames(t=2, size=8), tile=8, tile_overlap=4, chunk=2, chunk_overlap=0, steps=2, sampler_name="heun")
    assert reported == [(1, 2), (2, 2)]


@pytest.mark.parametrize("tile", [32, 4096])   # 4096: a tile past the frame, i.e. whole frames of 32
def test_out_of_memory_samples_again_with_smaller_tiles_and_says_so(x4, caplog, tile):
    import comfy.model_management as mm

    images = frames(t=2, size=32)
    expected = upscale(x4, images, tile=16, tile_overlap=8, chunk=2, chunk_overlap=0, steps=1)
    widths = []

    def out_of_memory_above_16(module, args):
        widths.append(args[0].shape[-1])
        if args[0].shape[-1] > 16:
            raise mm.OOM_EXCEPTION("test: no memory for a 32-pixel tile")

    # the UNet's first layer: it sees each tile (the tiling wraps the UNet's inner forward)
    hook = x4["model"].model.diffusion_model.input_blocks[0][0].register_forward_pre_hook(out_of_memory_above_16)
    try:
        with caplog.at_level("WARNING", logger="videoldm"):
            got = upscale(x4, images, tile=tile, tile_overlap=16, chunk=2, chunk_overlap=0, steps=1)
    finally:
        hook.remove()
    assert widths[0] == 32 and set(widths[1:]) == {16}
    assert torch.equal(got, expected)   # the same plan as asking for tiles of 16 (overlap 8) directly
    assert "ran out of memory with tiles of 32; sampling again with tiles of 16" in caplog.text
    assert "chunks of 2 frames are kept" in caplog.text


def test_a_model_that_is_not_an_x4_upscaler_is_named(x4, tiny_sd1):
    with pytest.raises(x4["error"], match="expected an SD x4 upscaler MODEL.*found BaseModel"):
        upscale(x4, frames(), model=tiny_sd1[0])


@pytest.mark.parametrize("kw, message", [
    (dict(tile=16, tile_overlap=16), "tile overlap must be smaller than the tile \\(16\\)"),
    (dict(tile=8, tile_overlap=16), "tile overlap must be smaller than the tile \\(8\\)"),
    (dict(chunk=4, chunk_overlap=4), "chunk overlap must be smaller than the chunk \\(4\\)"),
    (dict(tile=12), "tile_size must be a multiple of 8, found 12"),
])
def test_bad_tiling_is_refused_before_sampling(x4, kw, message):
    with pytest.raises(x4["error"], match=message):
        upscale(x4, frames(), **kw)


def test_non_finite_low_res_frames_are_refused_naming_the_input(x4):
    bad = frames()
    bad[1, 2, 3, 0] = float("nan")
    with pytest.raises(Exception, match="Video Upscale: images holds 1 NaN or infinite values"):
        upscale(x4, bad)


def test_frames_off_the_latent_grid_are_refused_with_their_size(x4):
    with pytest.raises(x4["error"], match="multiples of 8 pixels, found 20x12"):
        upscale(x4, torch.rand(2, 12, 20, 3))


def test_temporal_layers_of_an_x4_adapter_see_whole_chunks(x4, pack_module):
    patch = pack_module("host.temporal_adapter")
    spec, module = patch.fresh_adapter_for_model(x4["model"])
    assert spec.family == "SD-x4-upscaler"
    torch.manual_seed(0)
    for p in module.parameters():
        torch.nn.init.normal_(p, std=0.05)
    adapter = patch.build_adapter_patcher(spec, module.state_dict(), source="test")
    video_model = patch.apply_adapter(x4["model"], adapter, "x4-temporal")
    seen = []
    handle = adapter.model.slot("input_blocks.1.0").register_forward_hook(lambda m, args, out: seen.append(args[2]))
    try:
        out = upscale(x4, frames(t=6, size=16), tile=16, tile_overlap=4, chunk=4, chunk_overlap=2, model=video_model, steps=1)
    finally:
        handle.remove()
    assert seen == [4, 4]                      # chunks [0, 4) and [2, 6), every frame of a chunk together
    assert (out - upscale(x4, frames(t=6, size=16), tile=16, tile_overlap=4, chunk=4, chunk_overlap=2, steps=1)).abs().max() > 1e-3


def test_core_sampler_sigmas_and_noise_reach_the_upscaler(x4):
    """SAMPLER + SIGMAS of the node's own choice give its own result; other SIGMAS or NOISE change it."""
    import comfy.samplers
    from comfy_extras.nodes_custom_sampler import Noise_RandomNoise

    images = frames(t=2, size=16)
    kw = dict(model=x4["model"], positive=x4["positive"], negative=x4["negative"], images=images, noise_augmentation=0.1,
              seed=3, steps=2, cfg=2.0, sampler_name="euler", scheduler="normal", tile_size=8, tile_overlap=4,
              chunk_length=2, chunk_overlap=0)
    run = lambda **extra: x4["node"].execute(**kw, **extra).result[0]["samples"]   # noqa: E731
    with torch.inference_mode():
        own = run()
        sigmas = comfy.samplers.calculate_sigmas(x4["model"].get_model_object("model_sampling"), "normal", 2).cpu()
        assert torch.equal(run(sampler=comfy.samplers.sampler_object("euler"), sigmas=sigmas), own)
        assert torch.equal(run(noise=Noise_RandomNoise(3)), own)   # the seed's own noise, through NOISE
        assert (run(noise=Noise_RandomNoise(4)) - own).abs().max() > 1e-3
        assert (run(sigmas=sigmas[1:]) - own).abs().max() > 1e-3   # starting from a lower noise level


@pytest.mark.parametrize("kind", ["image", "temporal"])
def test_a_low_res_latent_with_its_vae_gives_the_same_result_as_its_decoded_images(x4, vaes, pack_module, kind):
    """low_res_latent + vae: decoded window by window inside the node (Temporal VAE Decode's default
    windows) into the compact frames, the same frames as Temporal VAE Decode → images, for an image
    VAE and for one whose decoder has temporal layers (which the decode inside the node uses)."""
    decoder, image_vae, temporal_vae = vaes
    upscaler = pack_module("host.video_upscale")
    vae = temporal_vae if kind == "temporal" else image_vae
    torch.manual_seed(1)
    latent = torch.randn(20, 4, 2, 2)        # 16 px frames, two decode windows (17, overlap 1)
    with torch.inference_mode():
        images = decoder.decode_video(vae, latent, upscaler.DECODE_WINDOW, upscaler.DECODE_OVERLAP)
        if kind == "temporal":                # the temporal layers change the frames the upscaler sees
            plain = decoder.decode_video(image_vae, latent, upscaler.DECODE_WINDOW, upscaler.DECODE_OVERLAP)
            assert (images - plain).abs().max() > 1e-3
        from_images = upscale(x4, images, tile=8, tile_overlap=4, chunk=8, chunk_overlap=2, steps=1)
        from_latent = x4["node"].execute(
            model=x4["model"], positive=x4["positive"], negative=x4["negative"], low_res_latent={"samples": latent},
            vae=vae, noise_augmentation=0.1, seed=3, steps=1, cfg=2.0, sampler_name="euler", scheduler="normal",
            tile_size=8, tile_overlap=4, chunk_length=8, chunk_overlap=2).result[0]["samples"]
    assert images.shape == (20, 16, 16, 3)
    assert torch.equal(from_latent, from_images)


def test_a_low_res_latent_is_decoded_with_temporal_vae_decodes_default_windows(x4, vaes, pack_module):
    """The node's promise: a low_res_latent gives the frames Temporal VAE Decode gives at its default
    window and overlap (read from that node's schema, not from the upscaler), through the VAE's temporal
    layers, so a latent upscales as its decoded images do. Another window would put other frames in
    one clip for the temporal layers."""
    decoder, _, temporal_vae = vaes
    schema = pack_module("nodes.temporal_decoder").TemporalVAEDecode.define_schema()
    defaults = {i.id: i.default for i in schema.inputs if i.id in ("window", "overlap")}
    torch.manual_seed(1)
    latent = torch.randn(20, 4, 2, 2)
    with torch.inference_mode():
        images = decoder.decode_video(temporal_vae, latent, defaults["window"], defaults["overlap"])
        from_images = upscale(x4, images, tile=8, tile_overlap=4, chunk=8, chunk_overlap=2, steps=1)
        from_latent = x4["node"].execute(
            model=x4["model"], positive=x4["positive"], negative=x4["negative"], low_res_latent={"samples": latent},
            vae=temporal_vae, noise_augmentation=0.1, seed=3, steps=1, cfg=2.0, sampler_name="euler",
            scheduler="normal", tile_size=8, tile_overlap=4, chunk_length=8, chunk_overlap=2).result[0]["samples"]
    assert torch.equal(from_latent, from_images)


@pytest.mark.parametrize("sources, message", [
    (dict(), "exactly one source: .* found neither"),
    (dict(images=True, low_res_latent=True), "exactly one source: .* found both"),
    (dict(low_res_latent=True), "low_res_latent needs the vae that decodes it"),
    (dict(low_res_latent=True, vae=True, channels=3), "expected an image VAE's latent \\(frames, 4 channels.*found a latent "
                                                      "of shape \\(2, 3, 2, 2\\)"),
])
def test_the_low_res_source_must_be_one_of_images_or_a_latent_with_its_vae(x4, tiny_sd1, sources, message):
    given = {"images": frames(t=2, size=16), "low_res_latent": {"samples": torch.zeros(2, sources.pop("channels", 4), 2, 2)},
             "vae": tiny_sd1[2]}
    with pytest.raises(x4["error"], match=message):
        x4["node"].execute(model=x4["model"], positive=x4["positive"], negative=x4["negative"],
                           **{k: given[k] for k in sources}, noise_augmentation=0.1, seed=3, steps=1, cfg=2.0,
                           sampler_name="euler", scheduler="normal", tile_size=8, tile_overlap=4, chunk_length=2,
                           chunk_overlap=0)


@pytest.mark.parametrize("source, shape", [("images", (2, 0, 0, 3)), ("images", (0, 16, 16, 3)), ("images", (2, 16, 16, 1)),
                                           ("low_res_latent", (0, 4, 2, 2)), ("low_res_latent", (2, 4, 0, 2))])
def test_empty_or_non_rgb_low_res_frames_are_refused_before_sampling(x4, tiny_sd1, pack_module, monkeypatch, source, shape):
    monkeypatch.setattr(pack_module("host.video_upscale"), "_sample", lambda *a, **k: pytest.fail("sampled"))
    given = {"images": torch.zeros(shape)} if source == "images" else {"low_res_latent": {"samples": torch.zeros(shape)},
                                                                         "vae": tiny_sd1[2]}
    with pytest.raises(x4["error"], match=f"{source}: expected .*found (a latent of )?shape {re.escape(str(shape))}"):
        x4["node"].execute(model=x4["model"], positive=x4["positive"], negative=x4["negative"], **given,
                           noise_augmentation=0.1, seed=3, steps=1, cfg=2.0, sampler_name="euler", scheduler="normal",
                           tile_size=8, tile_overlap=4, chunk_length=2, chunk_overlap=0)


def test_rgba_frames_upscale_as_their_rgb(x4):
    """Alpha is dropped, as core's VAE encodes drop it (JoinImageWithAlpha makes 4-channel IMAGEs)."""
    rgb = frames(t=2)
    rgba = torch.cat([rgb, torch.rand(2, 16, 16, 1)], dim=-1)
    assert torch.equal(upscale(x4, rgba, steps=1), upscale(x4, rgb, steps=1))


def test_decoding_the_low_res_latent_out_of_memory_falls_back_to_smaller_decode_tiles(x4, tiny_sd1, caplog):
    """The decode inside Video Upscale has the decode nodes' fallback (smaller spatial tiles, logged);
    the sampling's tiles are untouched."""
    import comfy.model_management as mm

    vae = tiny_sd1[2]
    widths = []

    def out_of_memory_above_8(module, args):
        widths.append(args[0].shape[-1])
        if args[0].shape[-1] > 8:
            raise mm.OOM_EXCEPTION("test: no memory to decode a 16-pixel-wide latent")

    hook = vae.first_stage_model.decoder.register_forward_pre_hook(out_of_memory_above_8)
    try:
        with caplog.at_level("WARNING", logger="videoldm"), torch.inference_mode():
            out = x4["node"].execute(
                model=x4["model"], positive=x4["positive"], negative=x4["negative"],
                low_res_latent={"samples": torch.randn(2, 4, 16, 16)}, vae=vae, noise_augmentation=0.1, seed=3,
                steps=1, cfg=1.0, sampler_name="euler", scheduler="normal", tile_size=64, tile_overlap=16,
                chunk_length=2, chunk_overlap=0).result[0]["samples"]
    finally:
        hook.remove()
    assert out.shape == (2, 4, 128, 128) and torch.isfinite(out).all()
    assert widths[0] == 16 and set(widths[1:]) == {8}
    assert "Temporal VAE Decode ran out of memory with whole frames; decoding again with spatial tiles of 8" in caplog.text
    assert "Video Upscale ran out of memory" not in caplog.text
