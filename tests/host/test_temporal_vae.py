"""Temporal VAE decoding on ComfyUI's real VAE classes: equal to core VAE Decode for image VAEs,
equal to ComfyUI's own SVD VideoDecoder for one window, seams and flicker when windowed; streamed into
a video file (Temporal VAE Decode to Video), the same frames, the file equal to core CreateVideo →
Save Video's, complete or absent."""

import os
from fractions import Fraction

import av
import numpy as np
import pytest
import torch
from devtools.frame_strip import read_frames

FRAMES = 12


def smooth_latents(frames=FRAMES, seed=0):
    """Latents that change slowly over time, like those of a real video."""
    torch.manual_seed(seed)
    a, b = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    t = torch.linspace(0, 1, frames)[:, None, None, None]
    return (1 - t) * a + t * b


def test_image_vae_gives_core_vae_decode_images(vaes):
    temporal_vae, image_vae, _ = vaes
    z = smooth_latents()
    with torch.inference_mode():
        ours = temporal_vae.decode_video(image_vae, z, window=5, overlap=2)
        core = image_vae.decode(z)
    assert ours.shape == core.shape == (FRAMES, 64, 64, 3)
    assert (ours - core).abs().max() < 1e-4


def test_one_window_equals_comfyuis_svd_video_decoder(vaes, vae_parts):
    temporal_vae, _, svd_vae = vaes
    _, _, video_decoder = vae_parts
    z = smooth_latents()
    with torch.inference_mode():
        ours = temporal_vae.decode_video(svd_vae, z, window=FRAMES, overlap=0)
        native = svd_vae.process_output(video_decoder(svd_vae.first_stage_model.post_quant_conv(z))).movedim(1, -1)
        image_only = svd_vae.decode(z)
    assert (ours - native).abs().max() < 1e-5
    assert (image_only - native).abs().max() > 1e-2, "the temporal layers made no difference"


def test_tiles_keep_all_frames_and_match_untiled_closely(vaes):
    temporal_vae, _, svd_vae = vaes
    z = smooth_latents()
    with torch.inference_mode():
        whole = temporal_vae.decode_video(svd_vae, z, window=FRAMES, overlap=0)
        one_tile = temporal_vae.decode_video(svd_vae, z, window=FRAMES, overlap=0, tile_size=8)
        tiled = temporal_vae.decode_video(svd_vae, z, window=FRAMES, overlap=0, tile_size=6)  # 2x2 tiles, 4 shared
    assert torch.equal(one_tile, whole)
    assert tiled.shape == whole.shape
    # the decoder's mid-block attention sees the whole frame, so tiles cannot be exact: bound the
    # mean error at 0.02 (about 5 of 255 levels) for 2x2 tiles of a 64-pixel frame
    assert (tiled - whole).abs().mean() < 0.02


def test_neighbouring_tiles_overlap_by_a_quarter_of_the_tile(vaes, monkeypatch):
    """The tile_size tooltip: tiles overlap by a quarter, so their seams are cross-faded. An 8-pixel
    latent frame in tiles of 4 divides exactly: without the overlap it was two tiles a side that only
    touch, decoded and joined edge to edge. Each tile decoded is recorded by its latent rows and
    columns: along each axis neighbours share at least 4 // 4 = 1 latent pixel."""
    temporal_vae, _, svd_vae = vaes
    decoded = []
    real = temporal_vae.check_decoded
    monkeypatch.setattr(temporal_vae, "check_decoded", lambda x, region: (decoded.append(region), real(x, region)))
    z = smooth_latents(frames=2)
    with torch.inference_mode():
        frames = temporal_vae.decode_video(svd_vae, z, window=2, overlap=0, tile_size=4)
    assert frames.shape == (2, 64, 64, 3)
    for axis in ("rows", "cols"):
        spans = sorted({getattr(region, axis) for region in decoded})
        assert spans[0][0] == 0 and spans[-1][1] == 8 and all(end - start == 4 for start, end in spans)
        assert all(after[0] <= before[1] - 1 for before, after in zip(spans, spans[1:])), spans


def flicker(frames):
    return (frames[1:] - frames[:-1]).abs().mean(dim=(1, 2, 3))


class OutOfMemoryAbove(torch.nn.Module):
    """A decoder that runs out of device memory on latents wider than `limit` pixels."""

    def __init__(self, decoder, limit: int, error=None):
        super().__init__()
        self.decoder, self.limit, self.widths, self.error = decoder, limit, [], error

    def forward(self, z, **kwargs):
        import comfy.model_management as mm

        self.widths.append(z.shape[-1])
        if z.shape[-1] > self.limit:
            raise (self.error or mm.OOM_EXCEPTION)(f"test: no memory for {z.shape[-1]} pixels")
        return self.decoder(z, **kwargs)


# CUDA's out-of-memory error, and the accelerator error that core's is_oom also counts (core's VAE
# Decode falls back to tiles on both; the pack caught only the first)
@pytest.mark.parametrize("error", [None, lambda text: torch.AcceleratorError(f"CUDA error: out of memory ({text})")])
@pytest.mark.parametrize("tile", [0, 4096])   # 4096: a tile past the frame is whole frames, and the log says so
def test_out_of_memory_falls_back_to_smaller_tiles_and_says_so(vaes, vae_parts, caplog, error, tile):
    temporal_vae = vaes[0]
    vae = temporal_vae.load_temporal_vae(vae_parts[0], "oom")
    z = torch.randn(3, 4, 32, 32)
    with torch.inference_mode():
        expected = temporal_vae.decode_video(vae, z, window=3, overlap=0, tile_size=8)
        vae.first_stage_model.decoder = OutOfMemoryAbove(vae.first_stage_model.decoder, limit=8, error=error)
        with caplog.at_level("WARNING", logger="videoldm"):
            frames = temporal_vae.decode_video(vae, z, window=3, overlap=0, tile_size=tile)
    assert vae.first_stage_model.decoder.widths[:3] == [32, 16, 8]   # whole frames, then 16, then 8
    assert torch.equal(frames, expected)
    assert "ran out of memory with whole frames; decoding again with spatial tiles of 16" in caplog.text
    assert "temporal window of 3 frames is kept" in caplog.text
    vae.first_stage_model.decoder.limit = 4   # below the smallest tile: the error reaches the user
    with torch.inference_mode(), pytest.raises(RuntimeError, match="no memory for 8 pixels"):
        temporal_vae.decode_video(vae, z, window=3, overlap=0)
    vae.first_stage_model.decoder.error = lambda text: RuntimeError(f"not memory: {text}")   # any other error: no retry
    vae.first_stage_model.decoder.widths.clear()
    with torch.inference_mode(), pytest.raises(RuntimeError, match="not memory"):
        temporal_vae.decode_video(vae, z, window=3, overlap=0)
    assert vae.first_stage_model.decoder.widths == [32]



def test_the_latents_are_scanned_once_per_decode_not_again_per_retry(vaes, vae_parts, tmp_path, monkeypatch):
    """The finiteness scan reads the whole video's latents: once per decode, before the VAE loads,
    not again in each retry with smaller tiles (nor twice on the way into the file)."""
    temporal_vae = vaes[0]
    vae = temporal_vae.load_temporal_vae(vae_parts[0], "oom")
    vae.first_stage_model.decoder = OutOfMemoryAbove(vae.first_stage_model.decoder, limit=8)
    scans = []
    real = temporal_vae.check_finite_input
    monkeypatch.setattr(temporal_vae, "check_finite_input", lambda *args: (scans.append(args[1:]), real(*args)))
    with torch.inference_mode():
        temporal_vae.decode_video(vae, torch.randn(3, 4, 32, 32), window=3, overlap=0)
        temporal_vae.decode_video_to_file(vae, torch.randn(3, 4, 32, 32), 3, 0, 0, 8, tmp_path / "once.mp4")
    assert vae.first_stage_model.decoder.widths[:3] == [32, 16, 8]   # each decode retried twice
    assert scans == [("Temporal VAE Decode", "samples")] * 2

def test_windowed_seams_are_small_and_flicker_less_than_core_batches(vaes):
    """Reference: all frames as one clip. Core VAE Decode, when it splits the batch, decodes each
    batch as a separate clip (emulated here with its own decode per batch of 4)."""
    temporal_vae, _, svd_vae = vaes
    z = smooth_latents()
    with torch.inference_mode():
        reference = temporal_vae.decode_video(svd_vae, z, window=FRAMES, overlap=0)
        windowed = temporal_vae.decode_video(svd_vae, z, window=6, overlap=3)
        core_batches = torch.cat([svd_vae.decode(z[i:i + 4]) for i in range(0, FRAMES, 4)])
    error = (windowed - reference).abs().mean(dim=(1, 2, 3))
    seams, interior = error[[3, 4, 5, 6, 7, 8]], error[[0, 1, 10, 11]]
    print(f"seam error {seams.mean():.4f}, interior {interior.mean():.4f}")
    assert seams.max() < 0.02  # images in [0, 1]
    assert flicker(windowed).max() < flicker(core_batches).max()
    assert (flicker(windowed) - flicker(reference)).abs().mean() < (flicker(core_batches) - flicker(reference)).abs().mean()
    # the node's default overlap (1 frame, as window 17 / overlap 1) still beats core's separate batches
    with torch.inference_mode():
        one = temporal_vae.decode_video(svd_vae, z, window=5, overlap=1)
    print(f"overlap 1: seam error {(one - reference).abs().mean(dim=(1, 2, 3)).max():.4f}")
    assert (one - reference).abs().mean(dim=(1, 2, 3)).max() < 0.02
    assert (flicker(one) - flicker(reference)).abs().mean() < (flicker(core_batches) - flicker(reference)).abs().mean()


def test_addon_file_turns_an_image_vae_temporal(pack_module, vae_parts, node_classes, vaes):
    import folder_paths
    from safetensors.torch import save_file

    temporal_decoder = pack_module("videoldm_core.temporal_decoder")
    image_sd, _, video_decoder = vae_parts
    _, spec, weights = temporal_decoder.split_svd_vae({**image_sd, **{f"decoder.{k}": v for k, v in video_decoder.state_dict().items()}})
    addon_dir = folder_paths.get_folder_paths("temporal_adapters")[0]
    vae_dir = folder_paths.get_folder_paths("vae")[0]
    os.makedirs(addon_dir, exist_ok=True), os.makedirs(vae_dir, exist_ok=True)
    save_file(weights, os.path.join(addon_dir, "decoder_addon.safetensors"),
              metadata={temporal_decoder.TEMPORAL_DECODER_METADATA_KEY: spec.to_json()})
    save_file(image_sd, os.path.join(vae_dir, "image_vae.safetensors"))
    vae = node_classes["VideoLDMLoadTemporalVAE"].execute(vae_name="vae/image_vae.safetensors", temporal_decoder="decoder_addon.safetensors").result[0]
    z = {"samples": smooth_latents()}
    with torch.inference_mode():
        ours = node_classes["VideoLDMTemporalVAEDecode"].execute(vae=vae, samples=z, window=FRAMES, overlap=0, tile_size=0).result[0]
        svd = vaes[0].decode_video(vaes[2], z["samples"], FRAMES, 0)
    assert torch.allclose(ours, svd, atol=1e-6)


def test_an_addon_for_a_vae_with_temporal_layers_is_refused_before_either_is_read(pack_module, vae_parts, node_classes,
                                                                                  monkeypatch):
    """An SVD VAE has its temporal decoder: an add-on chosen beside it is refused from the VAE's
    header, before the add-on or a weight of the VAE is read."""
    import folder_paths
    from safetensors.torch import save_file

    image_sd, _, video_decoder = vae_parts
    vae_dir = folder_paths.get_folder_paths("vae")[0]
    os.makedirs(vae_dir, exist_ok=True)
    save_file({**image_sd, **{f"decoder.{k}": v for k, v in video_decoder.state_dict().items()}},
              os.path.join(vae_dir, "svd_vae.safetensors"))
    host = pack_module("host.temporal_decoder")
    read = []
    monkeypatch.setattr(host, "read_addon_file", lambda *a, **k: read.append("add-on"))
    monkeypatch.setattr(host.WeightsFile, "tensors", lambda *a, **k: read.append("VAE"))
    with pytest.raises(host.TemporalDecoderFormatError, match=r"'svd_vae.safetensors' already has temporal decoder "
                                                              r"layers; choose 'none' for the add-on"):
        node_classes["VideoLDMLoadTemporalVAE"].execute(vae_name="vae/svd_vae.safetensors",
                                                        temporal_decoder="decoder_addon.safetensors")
    assert not read


def test_latent_with_the_wrong_channels_is_refused(vaes):
    temporal_vae, image_vae, _ = vaes
    with pytest.raises(ValueError, match="the latent has 16 channels .* the VAE decodes 4-channel latents") as refused:
        temporal_vae.decode_video(image_vae, torch.zeros(4, 16, 8, 8), 4, 1)
    assert type(refused.value).__module__ == "videoldm"   # reported as the pack's error (videoldm.DecodeInputError)


def test_a_non_finite_latent_is_refused_before_decoding(vaes):
    temporal_vae, image_vae, _ = vaes
    z = torch.zeros(4, 4, 8, 8)
    z[2, 0, 1, 1] = float("inf")
    decoded = []
    hook = image_vae.first_stage_model.decoder.register_forward_pre_hook(lambda *a: decoded.append(1))
    try:
        with pytest.raises(Exception, match="Temporal VAE Decode: samples holds 1 NaN or infinite values"):
            temporal_vae.decode_video(image_vae, z, 4, 1)
    finally:
        hook.remove()
    assert not decoded


@pytest.mark.parametrize("to_file", [False, True])
def test_a_vae_that_decodes_nan_stops_the_decode_naming_the_frames(vaes, tmp_path, to_file):
    """A float16 VAE that overflows makes NaN, which [0, 1] clamping would write as black pixels."""
    temporal_vae, image_vae, _ = vaes
    calls = []

    def overflow_in_the_second_window(module, inputs, output):
        calls.append(output.shape[0])
        if len(calls) == 2:
            output = output.clone()
            output[1, 0, 2, 2] = float("nan")
        return output

    hook = image_vae.first_stage_model.decoder.register_forward_hook(overflow_in_the_second_window)
    try:
        with torch.inference_mode(), pytest.raises(Exception, match=r"Temporal VAE Decode: the VAE decoded 1 NaN or "
                                                                   r"infinite values \(of \d+\) in frames 2 to 5"):
            if to_file:
                temporal_vae.decode_video_to_file(image_vae, smooth_latents(), 4, 1, 0, 8, tmp_path / "nan.mp4")
            else:
                temporal_vae.decode_video(image_vae, smooth_latents(), 4, 1)
    finally:
        hook.remove()
    assert len(calls) == 2 and os.listdir(tmp_path) == []   # stopped at the window, no file left


def test_an_image_above_the_memory_limit_is_refused_before_decoding(vaes, vae_parts, monkeypatch):
    """The IMAGE is the whole video in host memory (the streamed node is the way past it)."""
    temporal_vae = vaes[0]
    vae = temporal_vae.load_temporal_vae(vae_parts[0], "limit")
    vae.first_stage_model.decoder = OutOfMemoryAbove(vae.first_stage_model.decoder, limit=1 << 20)   # records calls
    monkeypatch.setenv("VIDEOLDM_MAX_OUTPUT_GIB", "0.001")   # about 1 MiB
    z = torch.zeros(8, 4, 32, 32)   # 8 frames of 256x256x3 float32: 6 MiB
    import comfy.model_management as mm

    load = mm.load_models_gpu
    monkeypatch.setattr(mm, "load_models_gpu", lambda *a, **k: pytest.fail("the VAE was loaded"))
    with torch.inference_mode(), pytest.raises(ValueError, match=r"Temporal VAE Decode: frames=8, height=256, width=256 "
                                               r"imply 6\.0 MiB for an IMAGE of 8 frames of 256x256 .*Decode to Video"):
        temporal_vae.decode_video(vae, z, 4, 1)
    assert vae.first_stage_model.decoder.widths == []
    monkeypatch.setattr(mm, "load_models_gpu", load)
    monkeypatch.setenv("VIDEOLDM_MAX_OUTPUT_GIB", "0.01")
    with torch.inference_mode():
        assert temporal_vae.decode_video(vae, z[:2], 2, 0).shape == (2, 256, 256, 3)


def test_a_vae_that_cannot_decode_in_windows_is_refused_by_kind(vaes):
    """TAESD (core builds it from a taesd state dict) has no KL decoder to run on a window."""
    import comfy.sd
    from comfy.taesd.taesd import TAESD

    temporal_vae = vaes[0]
    taesd = comfy.sd.VAE(sd={f"taesd_decoder.{k}": v for k, v in TAESD().taesd_decoder.state_dict().items()})
    assert type(taesd.first_stage_model).__name__ == "TAESD" and taesd.latent_channels == 4
    with pytest.raises(ValueError, match=r"expected a VAE with a KL autoencoder's decoder .*found TAESD.*core's VAE Decode") as refused:
        temporal_vae.decode_video(taesd, smooth_latents(), 4, 1)
    assert type(refused.value).__name__ == "DecodeInputError" and type(refused.value).__module__ == "videoldm"


def test_the_memory_asked_of_the_host_is_the_whole_windows(vaes, monkeypatch):
    """Core's estimate is per frame; a window of 8 decodes 8 frames at once."""
    import comfy.model_management as mm

    temporal_vae, image_vae, svd_vae = vaes
    asked = []
    load = mm.load_models_gpu
    monkeypatch.setattr(mm, "load_models_gpu", lambda models, memory_required=0, **kw: asked.append(memory_required)
                        or load(models, memory_required=memory_required, **kw))
    for vae in (image_vae, svd_vae):
        for window in (1, 8):
            temporal_vae.decode_video(vae, smooth_latents(), window, 0)
    per_frame = image_vae.memory_used_decode((1, 4, 8, 8), image_vae.vae_dtype)
    assert asked == [per_frame, 8 * per_frame, 2 * per_frame, 16 * per_frame]


@pytest.mark.parametrize("window, overlap, message", [(0, 0, "window must be at least 1"), (4, 4, "overlap must be in 0..window-1")])
def test_bad_window_settings_are_refused(vaes, window, overlap, message):
    temporal_vae, image_vae, _ = vaes
    with pytest.raises(ValueError, match=message):
        temporal_vae.decode_video(image_vae, smooth_latents(), window, overlap)


def test_overlap_not_below_window_fails_validation(node_classes):
    validate = node_classes["VideoLDMTemporalVAEDecode"].validate_inputs
    assert "less than the window (8 frames), found 8" in validate(window=8, overlap=8)
    assert "window must be at least 1, found 0" in validate(window=0, overlap=0)
    assert validate(window=8, overlap=2) is True


def test_a_vae_with_missing_weights_is_refused_not_loaded_half_random(pack_module, vaes, vae_parts):
    error = pack_module("videoldm_core.temporal_decoder").TemporalDecoderFormatError
    image_sd = {k: v for k, v in vae_parts[0].items() if not k.startswith("decoder.up.1.")}
    with pytest.raises(error, match=r"do not match a KL autoencoder: \d+ missing \(e.g. \['decoder.up.1."):
        vaes[0].load_temporal_vae(image_sd, "'partial.safetensors'")


def test_a_file_that_is_not_a_vae_is_refused(pack_module, vaes):
    error = pack_module("videoldm_core.temporal_decoder").TemporalDecoderFormatError
    with pytest.raises(error, match="not a KL autoencoder"):
        vaes[0].load_temporal_vae({"model.diffusion_model.out.2.weight": torch.zeros(4, 32, 3, 3)}, "'unet.safetensors'")


def diffusers_to_svd_layout(state_dict):
    """diffusers AutoencoderKLTemporalDecoder weights -> SVD's (sgm) VAE key layout: image parts with
    ComfyUI's own diffusers converter, temporal parts renamed here."""
    import re

    import comfy.diffusers_convert

    levels = 1 + max(int(k.split(".")[2]) for k in state_dict if k.startswith("decoder.up_blocks."))
    image, temporal = {}, {}
    names = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3"}
    for key, value in state_dict.items():
        m = re.match(r"decoder\.(mid_block|up_blocks\.(\d+))\.resnets\.(\d+)\.(temporal_res_block\.(\w+)|time_mixer\.mix_factor)\.?(.*)$", key)
        if m:
            block = f"mid.block_{int(m.group(3)) + 1}" if m.group(1) == "mid_block" else f"up.{levels - 1 - int(m.group(2))}.block.{m.group(3)}"
            rest = "mix_factor" if m.group(4).startswith("time_mixer") else f"time_stack.{names[m.group(5)]}.{m.group(6)}"
            temporal[f"decoder.{block}.{rest}"] = value
        elif key.startswith("decoder.time_conv_out."):
            temporal[key.replace("decoder.time_conv_out.", "decoder.conv_out.time_mix_conv.")] = value
        else:
            image[key.replace(".spatial_res_block.", ".")] = value
    return {**comfy.diffusers_convert.convert_vae_state_dict(image), **temporal}


def test_one_window_equals_diffusers_temporal_decoder(vaes):
    """An independent implementation: diffusers' AutoencoderKLTemporalDecoder.decode(z, num_frames)."""
    from diffusers import AutoencoderKLTemporalDecoder

    # four levels: ComfyUI's diffusers VAE converter assumes SD's level count
    reference = AutoencoderKLTemporalDecoder(block_out_channels=(32, 32, 64, 64), down_block_types=("DownEncoderBlock2D",) * 4,
                                             layers_per_block=2, latent_channels=4).eval()
    torch.manual_seed(9)
    with torch.no_grad():
        for p in reference.parameters():
            p.copy_(torch.randn_like(p) * 0.05)
    temporal_vae = vaes[0]
    vae = temporal_vae.load_temporal_vae(diffusers_to_svd_layout(reference.state_dict()), "'svd from diffusers'")
    z = smooth_latents(frames=6)
    with torch.inference_mode():
        expected = vae.process_output(reference.decode(z, num_frames=6).sample.float()).movedim(1, -1)
        ours = temporal_vae.decode_video(vae, z, window=6, overlap=0)
    assert (ours - expected).abs().max() < 1e-5


def test_optional_temporal_attention_starts_as_identity_and_then_mixes_frames(pack_module, vae_parts, vaes):
    """time_mode "all": temporal attention after the decoder's attention blocks. Fresh, the decode is
    unchanged; with weights, a frame's output depends on the other frames through it."""
    from comfy.ldm.modules.diffusionmodules.model import Decoder

    core = pack_module("videoldm_core.temporal_decoder")
    image_sd, ddconfig, _ = vae_parts
    decoder = Decoder(**ddconfig)
    decoder.load_state_dict({k[len("decoder."):]: v for k, v in image_sd.items() if k.startswith("decoder.")})
    spec = core.spec_for_decoder(decoder, attention=True)
    assert "mid.attn_1" in spec.attention
    assert core.TemporalDecoderSpec.from_json(spec.to_json()) == spec
    conv_only = core.TemporalDecoder(core.spec_for_decoder(decoder))
    with_attention = core.TemporalDecoder(spec)
    with_attention.load_state_dict(conv_only.state_dict(), strict=False)
    z = smooth_latents()
    with torch.no_grad():
        torch.testing.assert_close(with_attention.decode(decoder, z, FRAMES), conv_only.decode(decoder, z, FRAMES), atol=0, rtol=0)
        torch.manual_seed(3)
        for name, p in with_attention.named_parameters():
            if ".time_mix_block." in name or ".video_time_embed." in name:
                p.normal_(std=0.05)
        mixed = with_attention.decode(decoder, z, FRAMES)
        assert (mixed - conv_only.decode(decoder, z, FRAMES)).abs().max() > 1e-4
        # frames interact only through the temporal layers: with the 3D convs cut, attention alone
        # carries a change of the last frame's latent to the first frame's pixels
        for block in with_attention.spec.blocks:
            with_attention.get_submodule(block).mix_factor.fill_(-30.0)
        with_attention.conv_out.time_mix_conv.weight.zero_()
        with_attention.conv_out.time_mix_conv.weight[:, :, 1, 0, 0] = torch.eye(3)
        changed = z.clone()
        changed[-1] += 1.0
        first = lambda latents: with_attention.decode(decoder, latents, FRAMES)[0]
        assert (first(changed) - first(z)).abs().max() > 1e-5


STREAMED_FRAMES = 23


def frames_of(path) -> np.ndarray:
    return np.stack(read_frames(path)[0])


@pytest.mark.parametrize("window, overlap, tile_size", [(5, 2, 0), (8, 1, 4), (30, 0, 0)])
def test_streamed_blocks_are_the_in_memory_frames_bit_for_bit(vaes, window, overlap, tile_size):
    temporal_vae, _, svd_vae = vaes
    z = smooth_latents(STREAMED_FRAMES)
    with torch.inference_mode():
        whole = temporal_vae.decode_video(svd_vae, z, window, overlap, tile_size)
        blocks = list(temporal_vae.decoded_frames(svd_vae, z, window, overlap, tile_size))
    starts = [start for start, _ in blocks]
    assert starts == sorted(starts) and starts[0] == 0
    assert sum(block.shape[0] for _, block in blocks) == STREAMED_FRAMES
    assert max(block.shape[0] for _, block in blocks) <= window   # no more than a window is held finished
    assert torch.equal(torch.cat([block for _, block in blocks]), whole)
    if window < STREAMED_FRAMES:
        assert len(blocks) > 1


def test_a_vae_of_three_levels_upsamples_by_4_not_comfyuis_assumed_8(pack_module):
    """ComfyUI takes a VAE given a config to upsample 8x; a KL VAE halves the size once per level
    after the first, so the tiny x4 upscaler's VAE (ch_mult [1, 1, 2]: three levels) upsamples 4x.
    Its frames are 4x the latent (what its decoder gives, run here alone), and so are the decoded
    video's."""
    from devtools import tiny_bundles

    temporal_vae = pack_module("host.temporal_decoder")
    bundle = tiny_bundles.random_bundle_state_dict(tiny_bundles.tiny_x4_spec(), seed=3)
    image_sd = {k[len("first_stage_model."):]: v for k, v in bundle.items() if k.startswith("first_stage_model.")}
    vae = temporal_vae.load_temporal_vae(image_sd, "x4 vae")
    z = torch.randn(3, 4, 4, 6)
    with torch.inference_mode():
        alone = vae.first_stage_model.decoder(vae.first_stage_model.post_quant_conv(z))
        frames = temporal_vae.decode_video(vae, z, 3, 1)
    assert alone.shape[-2:] == (16, 24)
    assert (vae.upscale_ratio, vae.downscale_ratio) == (4, 4)
    assert frames.shape == (3, 16, 24, 3)


@pytest.mark.parametrize("fp16_intermediates", [False, True])
def test_the_file_equals_core_create_video_and_save_video(vaes, tmp_path, monkeypatch, fp16_intermediates):
    """Same frames into the same encoder settings: decoding both files gives identical pixels (with
    --fp16-intermediates the IMAGE is float16, and so are the streamed blocks: 8 bits made from
    float32 differ by a level in about 4% of the bytes)."""
    import comfy.cli_args
    from comfy_api.latest import InputImpl, Types

    monkeypatch.setattr(comfy.cli_args.args, "fp16_intermediates", fp16_intermediates)
    temporal_vae, _, svd_vae = vaes
    z = smooth_latents(STREAMED_FRAMES)
    with torch.inference_mode():
        images = temporal_vae.decode_video(svd_vae, z, 6, 2)
        written = temporal_vae.decode_video_to_file(svd_vae, z, 6, 2, 0, 12.5, tmp_path / "streamed.mp4")
        blocks = torch.cat([block for _, block in temporal_vae.decoded_frames(svd_vae, z, 6, 2, 0)])
    assert images.dtype == blocks.dtype == (torch.float16 if fp16_intermediates else torch.float32)
    assert torch.equal(blocks, images)
    core = InputImpl.VideoFromComponents(Types.VideoComponents(images=images, frame_rate=Fraction(12.5)))
    core.save_to(str(tmp_path / "core.mp4"))
    assert written == STREAMED_FRAMES
    ours, theirs = frames_of(tmp_path / "streamed.mp4"), frames_of(tmp_path / "core.mp4")
    assert ours.shape == (STREAMED_FRAMES, 64, 64, 3)
    assert np.array_equal(ours, theirs)
    with av.open(str(tmp_path / "streamed.mp4")) as container:
        stream = container.streams.video[0]
        assert stream.average_rate == Fraction(25, 2) and len(container.streams.audio) == 0
    # and they are the decoded frames, within H.264's loss
    assert np.abs(ours.astype(float) - (images.numpy() * 255)).mean() < 6


def test_a_lost_render_renders_again_only_the_node_that_made_it(vaes):
    """A node's fingerprint changes when a file behind its own cached VIDEO is gone, and stays put
    after it renders again (else it would render on every queue); another node's is not touched."""
    temporal_vae, _, svd_vae = vaes
    z = smooth_latents(4)
    with torch.inference_mode():
        first, _ = temporal_vae.render_video(svd_vae, z, 4, 1, 0, 8.0, node="lost_a")
        temporal_vae.render_video(svd_vae, z, 4, 1, 0, 8.0, node="lost_b")
    assert temporal_vae.lost_renders("lost_a") == temporal_vae.lost_renders("lost_b") == ()
    os.remove(first)
    assert temporal_vae.lost_renders("lost_a") == (first,) and temporal_vae.lost_renders("lost_b") == ()
    with torch.inference_mode():
        temporal_vae.render_video(svd_vae, z, 4, 1, 0, 8.0, node="lost_a")
    assert temporal_vae.lost_renders("lost_a") == (first,)


def test_an_interrupted_render_leaves_no_file(vaes, tmp_path, monkeypatch):
    """Cancel once the encoder has written frames to the .part (not before the writer exists: core
    checks for a cancel inside the decoder too): the part is removed, no file is left."""
    import comfy.model_management as mm

    temporal_vae, _, svd_vae = vaes
    z = smooth_latents(120)
    part = tmp_path / "cut.mp4.part"
    seen = []
    real = mm.throw_exception_if_processing_interrupted

    def interrupt_once_the_part_has_frames():
        if part.exists() and part.stat().st_size > 0:
            seen.append(part.stat().st_size)
            raise mm.InterruptProcessingException()
        real()

    monkeypatch.setattr(mm, "throw_exception_if_processing_interrupted", interrupt_once_the_part_has_frames)
    with torch.inference_mode(), pytest.raises(mm.InterruptProcessingException):
        temporal_vae.decode_video_to_file(svd_vae, z, 5, 1, 0, 8, tmp_path / "cut.mp4")
    assert seen and seen[0] > 0   # the writer had written encoded frames when the cancel came
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("fps, rate", [(8.19, Fraction(819, 100)), (23.976, Fraction(2997, 125)), (29.9996, Fraction(30))])
def test_the_stream_rate_is_the_frame_rate_rounded_to_a_thousandth(pack_module, tmp_path, fps, rate):
    """As core's writer (Fraction(round(fps · 1000), 1000)): 8.19 is 8189.999… thousandths in floating
    point, and truncating them would write an 8.189 fps stream, not the 819/100 asked for; 29.9996
    rounds up to 30. Expected rates are the decimal fractions reduced by hand."""
    video_file = pack_module("videoldm_core.video_file")
    assert video_file.frame_rate(fps) == rate
    with video_file.VideoFileWriter(tmp_path / "rate.mp4", 16, 16, fps) as video:
        video.write(torch.rand(3, 16, 16, 3))
    with av.open(str(tmp_path / "rate.mp4")) as container:
        assert container.streams.video[0].average_rate == rate


def test_a_failed_flush_closes_the_file_and_removes_it(pack_module, tmp_path, monkeypatch):
    """A flush that fails (a full disk) used to skip closing the container: the deleted .part stayed
    open for the server's life."""
    video_file = pack_module("videoldm_core.video_file")
    closed = []
    with pytest.raises(OSError, match="No space left"):
        with video_file.VideoFileWriter(tmp_path / "full.mp4", 64, 64, 8) as video:
            video.write(torch.rand(3, 64, 64, 3))
            container = video._container
            real_close = container.close
            monkeypatch.setattr(video, "_container", type("Full", (), {
                "mux": lambda self, packets: (_ for _ in ()).throw(OSError(28, "No space left on device")),
                "close": lambda self: (closed.append(True), real_close())[1]})())
    assert closed == [True] and os.listdir(tmp_path) == []


def test_a_side_of_exactly_16384_pixels_is_written(pack_module, tmp_path):
    """16384 is the largest side libx264 takes, and the writer's limit is inclusive: a frame 16384
    wide is encoded (one frame here, to a file that opens with that width); one 2 pixels wider is refused."""
    video_file = pack_module("videoldm_core.video_file")
    with video_file.VideoFileWriter(tmp_path / "widest.mp4", 16384, 16, 8) as video:
        video.write(torch.rand(1, 16, 16384, 3))
    with av.open(str(tmp_path / "widest.mp4")) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.width, stream.codec_context.height, stream.frames) == (16384, 16, 1)
    with pytest.raises(video_file.VideoFileError, match="the frames are 16x16386"):
        video_file.VideoFileWriter(tmp_path / "tall.mp4", 16, 16386, 8)


def test_frame_sizes_h264_cannot_take_are_refused_before_decoding(pack_module, vaes, tmp_path, monkeypatch):
    """Odd sides, and sides over libx264's 16384 (an opaque avcodec_open2 error before), refused by
    the writer and, before any window is decoded or the VAE loaded, by the streamed decode."""
    import comfy.model_management as mm

    video_file = pack_module("videoldm_core.video_file")
    with pytest.raises(video_file.VideoFileError, match="even width and height, the frames are 63x64"):
        video_file.VideoFileWriter(tmp_path / "odd.mp4", 63, 64, 8)
    with pytest.raises(video_file.VideoFileError, match="2 to 16384 pixels a side, the frames are 16392x16"):
        video_file.VideoFileWriter(tmp_path / "wide.mp4", 16392, 16, 8)
    temporal_vae, _, svd_vae = vaes
    monkeypatch.setattr(mm, "load_models_gpu", lambda *a, **k: pytest.fail("the VAE was loaded"))
    with pytest.raises(video_file.VideoFileError, match="the frames are 16392x16"):
        temporal_vae.decode_video_to_file(svd_vae, torch.zeros(4, 4, 2, 2049), 5, 1, 0, 8, tmp_path / "w.mp4")
    for shape, message in (((0, 4, 8, 8), r"at least one frame .* found shape \(0, 4, 8, 8\)"),
                           ((3, 4, 0, 8), r"found shape \(3, 4, 0, 8\)"),
                           ((1, 4, 5, 8, 8), r"expected image latents \(frames, channels, height, width\), found shape")):
        with pytest.raises(ValueError, match=message):
            temporal_vae.decode_video_to_file(svd_vae, torch.zeros(shape), 5, 1, 0, 8, tmp_path / "e.mp4")
        with pytest.raises(ValueError, match=message):
            temporal_vae.decode_video(svd_vae, torch.zeros(shape), 5, 1)
    assert os.listdir(tmp_path) == []


def test_node_returns_a_video_backed_by_its_file(node_classes, vaes):
    _, _, svd_vae = vaes
    node = node_classes["VideoLDMTemporalVAEDecodeToVideo"]
    with torch.inference_mode():
        out = node.execute(vae=svd_vae, samples={"samples": smooth_latents(STREAMED_FRAMES)}, fps=8.0, window=9, overlap=1,
                           tile_size=0)
    video = out.result[0]
    assert video.get_frame_count() == STREAMED_FRAMES and video.get_frame_rate() == 8
    assert video.get_dimensions() == (64, 64)
    preview = out.ui.as_dict()["images"][0]
    assert preview["type"] == "temp" and preview["subfolder"] == "videoldm"
    assert os.path.basename(video.get_stream_source()) == preview["filename"]
    assert "less than the window (8 frames), found 8" in node.validate_inputs(fps=8.0, window=8, overlap=8)
    assert "fps" in node.validate_inputs(fps=float("nan"), window=8, overlap=1)
    for fps in (7.5, 29.97, 480.0):   # the rates interpolation gives (1.875 x 4; 30 fps interpolated twice)
        assert node.validate_inputs(fps=fps, window=8, overlap=1) is True
