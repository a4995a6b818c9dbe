"""Load Temporal VAE and Temporal VAE Decode: a decoder with temporal layers, windowed over time
(Video LDM §3.2)."""

from __future__ import annotations

from comfy_api.v0_0_2 import InputImpl, io, ui
from typing_extensions import override

from ..host.model_folders import TEMPORAL_ADAPTERS, TEMPORAL_DECODERS, filenames
from ..host.temporal_decoder import (NONE, STREAMED_SUBFOLDER, decode_video, load_temporal_vae_files, lost_renders,
                                     render_video, vae_sources)
from .io_types import checked_inputs, valid_numbers


def valid_windows(cls, window=None, overlap=None, **numbers) -> bool | str:
    """The decode nodes' validation. ComfyUI skips its own min/max checks for the inputs a
    validate_inputs names, so all are checked (None: linked); tile_size is 0 (no tiles) or a
    multiple of 8."""
    checked = valid_numbers(cls, ("tile_size",), window=window, overlap=overlap, **numbers)
    if checked is True and window is not None and overlap is not None and not overlap < window:
        return f"overlap must be less than the window ({window} frames), found {overlap}"
    return checked


class LoadTemporalVAE(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VideoLDMLoadTemporalVAE",
            display_name="Load Temporal VAE",
            category="Video LDM/vae",
            description="Loads a VAE whose decoder has temporal layers: an SVD VAE file, an SVD checkpoint's first "
                        "stage, or an image VAE plus a temporal-decoder add-on. Decode with Temporal VAE Decode.",
            search_aliases=["svd vae", "temporal decoder", "video vae"],
            inputs=[
                io.Combo.Input("vae_name", options=vae_sources(),
                               tooltip="A VAE file (models/vae), or a bundle or checkpoint whose first stage is used "
                                       "(models/videoldm_bundles, models/checkpoints)."),
                io.Combo.Input("temporal_decoder", options=[NONE] + filenames(TEMPORAL_DECODERS),
                               default=NONE,
                               tooltip="A temporal-decoder add-on for an image VAE (models/temporal_decoders), or "
                                       "'none' (an SVD VAE brings its own)."),
            ],
            outputs=[io.Vae.Output(display_name="VAE", tooltip="The VAE; decode videos with Temporal VAE Decode.")],
        )

    @classmethod
    @override
    def validate_inputs(cls, temporal_decoder=None) -> bool | str:
        """Add-ons saved in models/temporal_adapters by earlier versions of the pack still load from saved
        graphs, without that folder's adapters being listed here. A linked name (None here) is looked up
        when it runs."""
        if temporal_decoder in (None, NONE) or temporal_decoder in filenames(TEMPORAL_DECODERS, TEMPORAL_ADAPTERS):
            return True
        return (f"temporal_decoder: expected 'none' or a file in models/{TEMPORAL_DECODERS}, "
                f"found no file {temporal_decoder!r}.")

    @classmethod
    @override
    def execute(cls, vae_name, temporal_decoder) -> io.NodeOutput:
        checked_inputs(cls, locals())
        return io.NodeOutput(load_temporal_vae_files(vae_name, temporal_decoder))


class TemporalVAEDecode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VideoLDMTemporalVAEDecode",
            display_name="Temporal VAE Decode",
            category="Video LDM/vae",
            description="Decodes video latents in overlapping windows of frames, each window one clip for the "
                        "decoder's temporal layers, cross-faded at the seams. With an image VAE it gives the same "
                        "images as VAE Decode.",
            search_aliases=["temporal decoder", "video vae decode", "windowed decode"],
            inputs=[
                io.Vae.Input("vae", tooltip="A VAE; its temporal layers (from Load Temporal VAE) are used if present."),
                io.Latent.Input("samples", tooltip="Video latents: the batch is the frames."),
                io.Int.Input("window", default=17, min=1, max=4096,
                             tooltip="Frames decoded together as one clip. Larger: smoother, more memory. The "
                                     "default, 17 with overlap 1, moves on 16 frames per window."),
                io.Int.Input("overlap", default=1, min=0, max=4095,
                             tooltip="Frames shared by neighbouring windows and cross-faded; less than the window. "
                                     "More overlap gives smoother seams but costs about window / (window - overlap) "
                                     "times the decoding (16 with 4: 1.33x; 17 with 1: 1.06x).", advanced=True),
                io.Int.Input("tile_size", default=0, min=0, max=4096, step=8,
                             tooltip="Spatial tiles in latent pixels (0: whole frames). Each tile holds all frames of "
                                     "a window; tiles overlap by a quarter.", advanced=True),
            ],
            outputs=[io.Image.Output(display_name="IMAGE", tooltip="The decoded frames.")],
        )

    @classmethod
    def validate_inputs(cls, window=None, overlap=None, tile_size=None):
        return valid_windows(cls, window=window, overlap=overlap, tile_size=tile_size)

    @classmethod
    @override
    def execute(cls, vae, samples, window, overlap, tile_size) -> io.NodeOutput:
        checked_inputs(cls, locals())
        return io.NodeOutput(decode_video(vae, samples["samples"], window, overlap, tile_size))


class TemporalVAEDecodeToVideo(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VideoLDMTemporalVAEDecodeToVideo",
            display_name="Temporal VAE Decode to Video",
            category="Video LDM/vae",
            description="Temporal VAE Decode streamed into a video file: each window's finished frames go to the "
                        "H.264 encoder as they are decoded, so a minutes-long or high-resolution video never sits in "
                        "memory as images. The frames are the ones Temporal VAE Decode gives; the file equals "
                        "CreateVideo's (8-bit, no audio). Connect it to Save Video.",
            search_aliases=["streamed decode", "long video", "decode to mp4"],
            inputs=[
                io.Vae.Input("vae", tooltip="A VAE; its temporal layers (from Load Temporal VAE) are used if present."),
                io.Latent.Input("samples", tooltip="Video latents: the batch is the frames."),
                io.Float.Input("fps", default=24.0, min=0.001, max=4000.0, step=0.001, round=0.001,
                               tooltip="Frames per second of the video file, to 1/1000 as CreateVideo's writer "
                                       "stores it; any rate Moving Shapes or Interpolate Keyframes gives (e.g. 7.5 "
                                       "from 1.875 fps keyframes, or 480 from 30 fps interpolated twice)."),
                io.Int.Input("window", default=17, min=1, max=4096,
                             tooltip="Frames decoded together as one clip, as in Temporal VAE Decode. Memory holds "
                                     "about four windows of decoded frames, whatever the video's length."),
                io.Int.Input("overlap", default=1, min=0, max=4095,
                             tooltip="Frames shared by neighbouring windows and cross-faded; less than the window.",
                             advanced=True),
                io.Int.Input("tile_size", default=0, min=0, max=4096, step=8,
                             tooltip="Spatial tiles in latent pixels (0: whole frames). Each tile holds all frames of "
                                     "a window; tiles overlap by a quarter.", advanced=True),
            ],
            hidden=[io.Hidden.unique_id],   # which node's renders its cached VIDEO can lose
            outputs=[io.Video.Output(display_name="VIDEO",
                                     tooltip="The video, backed by the mp4 written to ComfyUI's temp folder; Save "
                                             "Video copies it to the output folder without encoding again.")],
        )

    @classmethod
    def validate_inputs(cls, fps=None, window=None, overlap=None, tile_size=None):
        return valid_windows(cls, fps=fps, window=window, overlap=overlap, tile_size=tile_size)

    @classmethod
    @override
    def fingerprint_inputs(cls, **kwargs):
        """Changes when a video this node returned has lost its file, so that ComfyUI renders again
        instead of handing Save Video a cached VIDEO whose file is gone."""
        return lost_renders(cls.hidden.unique_id if cls.hidden else None)

    @classmethod
    @override
    def execute(cls, vae, samples, fps, window, overlap, tile_size) -> io.NodeOutput:
        checked_inputs(cls, locals())
        path, name = render_video(vae, samples["samples"], window, overlap, tile_size, fps,
                                  node=cls.hidden.unique_id if cls.hidden else None)
        return io.NodeOutput(InputImpl.VideoFromFile(path),
                             ui=ui.PreviewVideo([ui.SavedResult(name, STREAMED_SUBFOLDER, io.FolderType.temp)]))
