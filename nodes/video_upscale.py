"""Video Upscale: the SD x4 upscaler over video frames, tiled in space and chunked in time
(Video LDM §3.1.1: the upsampler is applied convolutionally, on patches and portions of frames)."""

from __future__ import annotations

from comfy_api.v0_0_2 import io
from typing_extensions import override

from ..host.video_upscale import upscale_video
from ..videoldm_core.video_upscale import TilingError, check_split
from .io_types import checked_inputs, custom_sampling_inputs, sampler_inputs, valid_numbers


TILE_STEP = ("tile_size",)   # the x4 UNet halves the latent three times: tiles on the 8-pixel grid (validation;
                             # at run time host.video_upscale.check_grid says the same)


class VideoUpscale(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VideoLDMVideoUpscale",
            display_name="Video Upscale",
            category="Video LDM/upscaling",
            description="Upscales video frames 4x with the SD x4 upscaler (with or without a temporal adapter), "
                        "denoising in overlapping spatial tiles and temporal chunks blended at every step. The low-res "
                        "frames come from images, or from low_res_latent decoded with vae (compact for long videos).",
            inputs=[
                io.Model.Input("model", tooltip="The SD x4 upscaler MODEL, optionally with a temporal adapter applied."),
                io.Conditioning.Input("positive", tooltip="The prompt."),
                io.Conditioning.Input("negative", tooltip="The negative prompt."),
                io.Image.Input("images", optional=True,
                               tooltip="Low-res frames (batch = frames); height and width multiples of 8. Or leave it "
                                       "unconnected and connect low_res_latent and vae."),
                io.Float.Input("noise_augmentation", default=0.1, min=0.0, max=1.0, step=0.01,
                               tooltip="Noise on the low-res frames (level 0-350 of the upscaler), as core's "
                                       "SD_4XUpscale_Conditioning."),
                *sampler_inputs(cfg_default=4.0),
                io.Int.Input("tile_size", default=64, min=8, max=4096, step=8,
                             tooltip="Tile height and width in input pixels (= latent pixels; 64 gives 256-pixel output tiles); "
                                     "a multiple of 8."),
                io.Int.Input("tile_overlap", default=16, min=0, max=4096,
                             tooltip="Overlap of neighbouring tiles; smaller than tile_size.", advanced=True),
                io.Int.Input("chunk_length", default=8, min=1, max=4096,
                             tooltip="Frames denoised together (the temporal layers see a chunk); the paper uses about 8."),
                io.Int.Input("chunk_overlap", default=2, min=0, max=4095, tooltip="Overlap of neighbouring chunks.", advanced=True),
                *custom_sampling_inputs(),
                io.Latent.Input("low_res_latent", optional=True,
                                tooltip="Instead of images: the low-res video's LATENT, decoded here window by window "
                                        "(windows of 17 frames overlapping by 1, as Temporal VAE Decode's defaults) "
                                        "into compact frames, so no float32 IMAGE of the whole video is made."),
                io.Vae.Input("vae", optional=True,
                             tooltip="The VAE that decodes low_res_latent (the low-res model's VAE, or a Temporal "
                                     "VAE for its temporal decoder)."),
            ],
            outputs=[io.Latent.Output(tooltip="The x4 latent (decode with the x4 upscaler's VAE).")],
        )

    @classmethod
    def validate_inputs(cls, noise_augmentation=None, cfg=None, tile_size=None, tile_overlap=None, chunk_length=None,
                        chunk_overlap=None) -> bool | str:
        """Numbers finite and in range; each overlap below its tile or chunk (None: linked, checked when it
        runs), before the nodes upstream sample anything."""
        checked = valid_numbers(cls, TILE_STEP, noise_augmentation=noise_augmentation, cfg=cfg, tile_size=tile_size,
                                tile_overlap=tile_overlap, chunk_length=chunk_length, chunk_overlap=chunk_overlap)
        if checked is not True:
            return checked
        for name, size, overlap in (("tile", tile_size, tile_overlap), ("chunk", chunk_length, chunk_overlap)):
            if None not in (size, overlap):
                try:
                    check_split(name, size, overlap)
                except TilingError as e:
                    return str(e)
        return True

    @classmethod
    @override
    def execute(cls, model, positive, negative, noise_augmentation, seed, steps, cfg, sampler_name, scheduler,
                tile_size, tile_overlap, chunk_length, chunk_overlap, images=None, sampler=None, sigmas=None, noise=None,
                low_res_latent=None, vae=None) -> io.NodeOutput:
        checked_inputs(cls, locals())
        return io.NodeOutput(upscale_video(model, positive, negative, images, noise_augmentation, seed, steps, cfg,
                                           sampler_name, scheduler, tile_size, tile_overlap, chunk_length, chunk_overlap,
                                           sampler, sigmas, noise, low_res_latent, vae))
