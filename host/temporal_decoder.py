"""A VAE whose decoder has temporal layers (Video LDM §3.2), loaded into ComfyUI and decoded in
windows over time: what Load Temporal VAE and Temporal VAE Decode call.

ComfyUI's VAE Decode splits frames into memory-sized batches and decodes each batch as a separate
clip (its tiled fallback even decodes one frame at a time), so temporal layers see the wrong clip.
Here the clip is chosen explicitly: overlapping windows of frames, cross-faded, optionally tiled in
space with every frame of a window in each tile.
"""

from __future__ import annotations

import logging
import os
import uuid

import torch

import comfy.model_management as mm
import comfy.model_patcher
import comfy.ops
import comfy.sd
import comfy.utils
from comfy.ldm.models.autoencoder import AutoencodingEngine
import folder_paths

from ..videoldm_core.errors import shown
from ..videoldm_core.limits import (NonFiniteError, all_finite, check_finite_input, check_output_size,
                                    count_non_finite, tensor_bytes)
from ..videoldm_core.temporal_decoder import (DecodeInputError, TemporalDecoder, TemporalDecoderFormatError,
                                              TemporalDecoderSpec, check_temporal_decoder, read_addon_file, split_svd_vae)
from ..videoldm_core.weights_file import WeightsFile, build_on_meta, check_range
from ..videoldm_core.state_dict import check_weights
from ..videoldm_core.video_upscale import plan_tiles, smaller_tile
from ..videoldm_core.video_file import VideoFileWriter, check_frame_size
from ..videoldm_core.windows import windows
from .keys import TEMPORAL_DECODER_ATTR
from .model_folders import BUNDLES, TEMPORAL_ADAPTERS, TEMPORAL_DECODERS, full_path

log = logging.getLogger("videoldm")
NONE = "none"


def kl_vae_config(state_dict: dict, source: str) -> dict:
    """The AutoencoderKL config of an LDM-layout KL VAE, read off its weights (any width and depth)."""
    try:
        ch = state_dict["encoder.conv_in.weight"].shape[0]
        levels = 1 + max(int(k.split(".")[2]) for k in state_dict if k.startswith("encoder.down."))
        blocks = 1 + max(int(k.split(".")[4]) for k in state_dict if k.startswith("encoder.down.0.block."))
        z_channels = state_dict["decoder.conv_in.weight"].shape[1]
        ddconfig = {
            "double_z": state_dict["encoder.conv_out.weight"].shape[0] == 2 * z_channels, "z_channels": z_channels,
            "resolution": 256, "in_channels": state_dict["encoder.conv_in.weight"].shape[1],
            "out_ch": state_dict["decoder.conv_out.weight"].shape[0], "ch": ch,
            "ch_mult": [state_dict[f"encoder.down.{i}.block.0.conv1.weight"].shape[0] // ch for i in range(levels)],
            "num_res_blocks": blocks, "attn_resolutions": [], "dropout": 0.0,
        }
        embed_dim = state_dict["post_quant_conv.weight"].shape[1] if "post_quant_conv.weight" in state_dict else z_channels
    except KeyError as e:
        raise TemporalDecoderFormatError(
            f"{source}: not a KL autoencoder (expected encoder.* and decoder.* keys in the LDM layout; missing {e}).") from None
    except (ValueError, IndexError, ZeroDivisionError) as e:
        raise TemporalDecoderFormatError(f"{source}: not a KL autoencoder in the LDM layout (its keys or shapes do not "
                                         f"give a config: {type(e).__name__}).") from None
    if 0 in ddconfig["ch_mult"]:
        raise TemporalDecoderFormatError(f"{source}: not a KL autoencoder in the LDM layout (a level narrower than "
                                         f"its first, {ch} channels).")
    return {"params": {"ddconfig": ddconfig, "embed_dim": embed_dim}}


QUANT_CONVS = ("quant_conv.weight", "quant_conv.bias")   # supplied when absent (with_quant_convs)


def check_vae_file(file: WeightsFile):
    """The VAE in `file` (bare, or a checkpoint's first stage; with SVD's temporal layers or not),
    built on the meta device from the config its shapes imply and compared with them, before any
    weight is read: a file cannot make the loader allocate more than it holds. Returns the image
    autoencoder on the meta device."""
    from comfy.ldm.models.autoencoder import AutoencoderKL

    shapes = {k.removeprefix("first_stage_model."): file.shapes[k] for k in vae_keys(file.shapes)}
    if holds_temporal_decoder(shapes):
        shapes, spec, temporal = split_svd_vae(shapes, file.source)
        check_temporal_decoder(spec, temporal, file)
    config = kl_vae_config(shapes, file.source)
    image = build_on_meta(lambda: AutoencoderKL(**config["params"]), file, "VAE")
    check_weights(image.state_dict(), shapes, f"{file.source}: the VAE weights do not match a KL autoencoder",
                  TemporalDecoderFormatError, ignore_missing=QUANT_CONVS)
    return image


def holds_temporal_decoder(keys) -> bool:
    """Whether a VAE's keys (prefix removed) hold SVD's temporal decoder layers (their blend factors)."""
    return any(k.startswith("decoder.") and k.endswith(".mix_factor") for k in keys)


def vae_keys(shapes) -> list[str]:
    """The keys of a file's VAE: a checkpoint's first stage, or every key of a bare VAE (only these
    are checked, so only these are read)."""
    return [k for k in shapes if k.startswith("first_stage_model.")] or list(shapes)


def with_quant_convs(state_dict: dict) -> dict:
    """SVD's VAE has no post_quant_conv (and some VAEs no quant_conv); ComfyUI's AutoencoderKL
    always has both, so the missing ones are supplied as exact identities (1x1, no bias)."""
    out = dict(state_dict)
    z = state_dict["decoder.conv_in.weight"].shape[1]
    for name, channels in (("post_quant_conv", z), ("quant_conv", state_dict["encoder.conv_out.weight"].shape[0])):
        if f"{name}.weight" not in out:
            out[f"{name}.weight"] = torch.eye(channels)[:, :, None, None]
            out[f"{name}.bias"] = torch.zeros(channels)
    return out


def build_temporal_decoder(spec: TemporalDecoderSpec, state_dict: dict, source: str):
    module = TemporalDecoder(spec, operations=comfy.ops.manual_cast)
    patcher = comfy.model_patcher.CoreModelPatcher(module, load_device=mm.vae_device(), offload_device=mm.vae_offload_device())
    module.load_weights(state_dict, source, assign=patcher.is_dynamic())
    return patcher


def load_temporal_vae(vae_state_dict: dict, source: str, addon: tuple[TemporalDecoderSpec, dict] | None = None):
    """A ComfyUI VAE for the image part, with the temporal decoder (from an SVD VAE, or `addon`)
    attached for Temporal VAE Decode."""
    if any(k.startswith("first_stage_model.") for k in vae_state_dict):
        vae_state_dict = {k[len("first_stage_model."):]: v for k, v in vae_state_dict.items() if k.startswith("first_stage_model.")}
    temporal = None
    if holds_temporal_decoder(vae_state_dict):
        image_sd, spec, weights = split_svd_vae(vae_state_dict, source)
        temporal = (spec, weights)
        if addon is not None:
            raise TemporalDecoderFormatError(f"{source} already has temporal decoder layers; choose 'none' for the add-on.")
    else:
        image_sd = vae_state_dict
        temporal = addon
    config = kl_vae_config(image_sd, source)
    image_sd = with_quant_convs(image_sd)
    vae = comfy.sd.VAE(sd=image_sd, config=config)
    check_range(image_sd, vae.vae_dtype, source, TemporalDecoderFormatError)
    # ComfyUI assumes 8x when given a config; a KL VAE halves the size once per level after the first
    vae.downscale_ratio = vae.upscale_ratio = 2 ** (len(config["params"]["ddconfig"]["ch_mult"]) - 1)
    # ComfyUI only logs a mismatch; a VAE with random parts must not load
    check_weights(vae.first_stage_model.state_dict(), image_sd, f"{source}: the VAE weights do not match a KL autoencoder",
                  TemporalDecoderFormatError)
    if temporal is not None:
        setattr(vae, TEMPORAL_DECODER_ATTR, build_temporal_decoder(*temporal, source))
    return vae


def decode_video(vae, samples: torch.Tensor, window: int, overlap: int, tile_size: int = 0) -> torch.Tensor:
    """Frames (T, H, W, 3) from latents (T, C, h, w): windows of `window` frames overlapping by
    `overlap`, each decoded as one clip and cross-faded; optional spatial tiles of `tile_size`
    latent pixels (overlapping by a quarter) holding every frame of the window."""
    def whole(plan, decode, scale, device) -> torch.Tensor:
        return plan.blend(decode, scale=scale, channels_last=True, device=device).to(mm.intermediate_dtype())

    check_decodable(vae, samples)
    check_image_size(vae, samples)
    return _with_smaller_tiles(whole, vae, samples, window, overlap, tile_size)


def decoded_size(vae, samples: torch.Tensor) -> tuple[int, int]:
    """(height, width) of the frames `vae` decodes from `samples`."""
    return samples.shape[-2] * vae.upscale_ratio, samples.shape[-1] * vae.upscale_ratio


def check_image_size(vae, samples: torch.Tensor):
    """The IMAGE the decode returns is the whole video in host memory (float32 while windows are
    blended, then core's intermediate dtype): refused above the pack's limit before the VAE loads."""
    frames, (height, width) = samples.shape[0], decoded_size(vae, samples)
    shape = (frames, height, width, 3)
    implied = tensor_bytes(shape) + (tensor_bytes(shape, mm.intermediate_dtype())
                                     if mm.intermediate_dtype() != torch.float32 else 0)
    check_output_size("Temporal VAE Decode", implied, dict(frames=frames, height=height, width=width),
                      what=f"an IMAGE of {frames} frames of {width}x{height} (Temporal VAE Decode to Video writes them "
                           "to a file without holding them)")


def decode_video_to_file(vae, samples: torch.Tensor, window: int, overlap: int, tile_size: int, fps: float, path
                         ) -> int:
    """The frames `decode_video` gives, written to an mp4 at `path` window after window as they are
    finished, never held together: the streamed last stage of a long render. The file appears only
    when complete (videoldm_core.video_file). Returns the number of frames written."""
    check_decodable(vae, samples)
    height, width = decoded_size(vae, samples)
    check_frame_size(width, height)              # before anything is decoded

    def write(blocks) -> int:
        with VideoFileWriter(path, width, height, fps) as video:
            for block in blocks:
                video.write(block)
        return video.frames_written

    return _with_smaller_tiles(_blocks_to(write), vae, samples, window, overlap, tile_size)


STREAMED_SUBFOLDER = "videoldm"   # in ComfyUI's temp folder, which ComfyUI empties at start
_RENDERED: dict[str | None, list[str]] = {}   # node id -> every file render_video returned for it, in this server's life


def lost_renders(node: str | None = None) -> tuple[str, ...]:
    """The files render_video returned for `node` that are gone (the temp folder emptied by hand, or by
    a second ComfyUI starting on the same folders): a cached VIDEO backed by one would fail in Save
    Video. Only the node's own: a file lost elsewhere renders no other node again. Once lost, a file
    stays in the answer, so a node rendered again is cached again."""
    return tuple(path for path in _RENDERED.get(node, ()) if not os.path.exists(path))


def render_video(vae, samples: torch.Tensor, window: int, overlap: int, tile_size: int, fps: float,
                 node: str | None = None) -> tuple[str, str]:
    """Temporal VAE Decode to Video: the decoded frames streamed into a new mp4 in ComfyUI's temp
    folder, for graph node `node`. Returns (path, file name); the file is complete when this returns."""
    folder = os.path.join(folder_paths.get_temp_directory(), STREAMED_SUBFOLDER)
    os.makedirs(folder, exist_ok=True)
    name = f"temporal_vae_decode_{uuid.uuid4().hex[:12]}.mp4"
    path = os.path.join(folder, name)
    decode_video_to_file(vae, samples, window, overlap, tile_size, fps, path)
    _RENDERED.setdefault(node, []).append(path)
    return path, name


def _with_smaller_tiles(consume, vae, samples: torch.Tensor, window: int, overlap: int, tile_size: int):
    """`consume(*window_decoder(...))`; out of device memory, all again with spatial tiles of half the
    size (down to 8 pixels), with a log line: tiles are blended, so the frames change only within the
    blend's tolerance. The temporal window is never shrunk: that would change which frames the
    temporal layers see."""
    while True:
        try:
            return consume(*window_decoder(vae, samples, window, overlap, tile_size))
        except Exception as e:   # core's test of out of memory (its VAE Decode's): CUDA's error and the accelerator's
            mm.raise_non_oom(e)
            smaller = smaller_tile(tile_size, *samples.shape[-2:])
            if smaller is None:
                raise
            log.warning("Video LDM: Temporal VAE Decode ran out of memory with %s; decoding again with spatial tiles "
                        "of %d latent pixels (blended, so the frames change only within the blend's tolerance; the "
                        "temporal window of %d frames is kept).",
                        f"tiles of {tile_size}" if 0 < tile_size < max(samples.shape[-2:]) else "whole frames",
                        smaller, window)
            mm.soft_empty_cache()
            tile_size = smaller


def decoded_frames(vae, samples: torch.Tensor, window: int, overlap: int, tile_size: int):
    """Yields (start, frames) in order: the blended frames (n, H, W, 3) in [0, 1], in core's
    intermediate dtype (as decode_video's IMAGE) on the VAE's output device, as each temporal window
    finishes them."""
    check_decodable(vae, samples)
    return _in_order(*window_decoder(vae, samples, window, overlap, tile_size))


def consume_decoded_frames(consume, vae, samples: torch.Tensor, window: int, overlap: int, tile_size: int):
    """`consume(blocks)` of `decoded_frames`' blocks (n, H, W, 3) in order; out of device memory, all
    again with smaller spatial tiles, as the decode nodes do (`consume` must start afresh)."""
    check_decodable(vae, samples)
    return _with_smaller_tiles(_blocks_to(consume), vae, samples, window, overlap, tile_size)


def _blocks_to(consume):
    """What `_with_smaller_tiles` calls with a decoder: `consume` of its blocks of frames, in order."""
    return lambda *decoder: consume(block for _, block in _in_order(*decoder))


def _in_order(plan, decode, scale, device):
    """(start, frames) of one video as `plan.blend_in_order` finishes them, blended in float32 and
    then rounded to core's intermediate dtype as the whole IMAGE is (float16 under
    --fp16-intermediates): a file written from them holds the bytes core's writer makes of the IMAGE."""
    for start, block in plan.blend_in_order(decode, scale=scale, channels_last=True, device=device):
        yield start, block[0].to(mm.intermediate_dtype())


def check_decodable(vae, samples: torch.Tensor):
    """Refuses, before the VAE loads, latents it cannot decode as a video: another layout, another
    channel count, an empty side or non-finite values; and a VAE of another kind."""
    first_stage = vae.first_stage_model
    if (not isinstance(first_stage, AutoencodingEngine) or getattr(first_stage, "bn", None) is not None
            or not hasattr(first_stage, "decoder")):
        raise DecodeInputError(f"Temporal VAE Decode: expected a VAE with a KL autoencoder's decoder (SD1.x, SD2.x, "
                               f"SDXL, SVD ...), found {type(first_stage).__name__}, which it cannot decode in windows "
                               "of frames. Decode this latent with core's VAE Decode.")
    if samples.ndim != 4:
        raise DecodeInputError(f"Temporal VAE Decode: samples: expected image latents (frames, channels, height, "
                               f"width), found shape {tuple(samples.shape)}; a video model's 5-D latent decodes with "
                               "its own VAE Decode.")
    if samples.shape[1] != vae.latent_channels:
        raise DecodeInputError(f"Temporal VAE Decode: the latent has {samples.shape[1]} channels (shape "
                               f"{tuple(samples.shape)}), the VAE decodes {vae.latent_channels}-channel latents. Use "
                               "the VAE that matches the model that made the latent.")
    if 0 in samples.shape:
        raise DecodeInputError(f"Temporal VAE Decode: samples: expected at least one frame of at least 1x1 latent "
                               f"pixels, found shape {tuple(samples.shape)}.")
    check_finite_input(samples, "Temporal VAE Decode", "samples")


def window_decoder(vae, samples: torch.Tensor, window: int, overlap: int, tile_size: int):
    """(plan, decode, scale, device): the tile plan over windows of frames, the function decoding one
    region of it as one clip, the decoder's upsampling and the device the blend is kept on; the
    VAE (and its temporal layers) loaded. The callers have checked the latents (`check_decodable`):
    once per decode, not again for each retry with smaller tiles."""
    first_stage = vae.first_stage_model
    frames, _, height, width = samples.shape
    windows(frames, window, overlap)  # raises on window < 1 or overlap >= window, in the node's words
    tile = tile_size if tile_size > 0 else max(height, width)   # 0: whole frames
    plan = plan_tiles(frames, height, width, tile, tile // 4, window, overlap)
    temporal = getattr(vae, TEMPORAL_DECODER_ATTR, None)

    first = plan.regions[0]
    tile_shape = (first.frames[1] - first.frames[0], samples.shape[1], first.rows[1] - first.rows[0],
                  first.cols[1] - first.cols[0])
    # core's estimate is per frame (its VAE Decode splits the batch by it); a window decodes together
    memory = vae.memory_used_decode(tile_shape, vae.vae_dtype) * tile_shape[0] * (2 if temporal is not None else 1)
    mm.load_models_gpu([vae.patcher] + ([temporal] if temporal is not None else []), memory_required=memory)

    out_device = vae.output_device
    pbar = comfy.utils.ProgressBar(len(plan.regions))

    def decode(region) -> torch.Tensor:
        """One window of frames, one tile: decoded as one clip, (t, H, W, 3) in [0, 1]."""
        mm.throw_exception_if_processing_interrupted()
        t0, t1 = region.frames
        z = samples[t0:t1, :, slice(*region.rows), slice(*region.cols)].to(vae.device, vae.vae_dtype)
        if getattr(first_stage, "post_quant_conv", None) is not None:
            z = first_stage.post_quant_conv(z)
        x = temporal.model.decode(first_stage.decoder, z, t1 - t0) if temporal is not None else first_stage.decoder(z)
        check_decoded(x, region)
        pbar.update(1)
        return vae.process_output(x.to(out_device, torch.float32)).movedim(1, -1)

    return plan, decode, vae.upscale_ratio, out_device


def check_decoded(x: torch.Tensor, region):
    """Stops a decode whose VAE made NaN or infinity (a float16 VAE overflowing): clamped to [0, 1]
    they would be written as black or white pixels without a word."""
    if all_finite(x):
        return
    t0, t1 = region.frames
    raise NonFiniteError(f"Temporal VAE Decode: the VAE decoded {count_non_finite(x)} NaN or infinite values (of "
                         f"{x.numel()}) in frames {t0} to {t1 - 1}; a VAE overflowing in float16 is the usual cause. "
                         "Start ComfyUI with --bf16-vae or --fp32-vae, or check the VAE and the latent.")


VAE_FOLDERS = ("vae", BUNDLES, "checkpoints")


def vae_sources() -> list[str]:
    return [f"{key}/{n}" for key in VAE_FOLDERS for n in folder_paths.get_filename_list(key)]


def load_temporal_vae_files(vae_name: str, temporal_decoder: str = NONE):
    """Load Temporal VAE: `vae_name` as "vae/<file>", "videoldm_bundles/<file>" or "checkpoints/<file>"
    (its first stage), plus an optional temporal-decoder add-on from models/temporal_decoders (or
    models/temporal_adapters, where earlier versions of the pack put them)."""
    folder, _, name = vae_name.partition("/")
    if folder not in VAE_FOLDERS or not name:   # a linked name is any text: only these folders are read
        raise TemporalDecoderFormatError(f"Load Temporal VAE: vae_name: expected '<folder>/<file>' with a folder in "
                                         f"{list(VAE_FOLDERS)}, found {shown(vae_name)}.")
    file = WeightsFile(folder_paths.get_full_path_or_raise(folder, name), name, TemporalDecoderFormatError)
    image = check_vae_file(file)
    addon = None
    if temporal_decoder != NONE and holds_temporal_decoder(k.removeprefix("first_stage_model.") for k in file.shapes):
        raise TemporalDecoderFormatError(f"{file.source} already has temporal decoder layers; choose 'none' for the "
                                         "add-on.")   # before the add-on or the VAE is read
    if temporal_decoder != NONE:
        addon = read_addon_file(full_path(temporal_decoder, TEMPORAL_DECODERS, TEMPORAL_ADAPTERS), temporal_decoder,
                                decoder=image.decoder, vae_source=file.source)
    return load_temporal_vae(file.tensors(vae_keys(file.shapes)), file.source, addon)
