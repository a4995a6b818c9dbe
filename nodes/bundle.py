"""Load Video LDM Bundle: a small image LDM whose architecture is stated in its own metadata."""

from __future__ import annotations

from typing_extensions import override

from comfy_api.v0_0_2 import io

from ..host.bundle import load_bundle
from ..host.model_folders import BUNDLES, filenames
from .io_types import checked_inputs


class LoadBundle(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VideoLDMLoadBundle",
            display_name="Load Video LDM Bundle",
            category="Video LDM/loaders",
            description=(
                "Loads a Video LDM bundle: an image LDM (UNet, VAE, CLIP text encoder) in one safetensors "
                "file whose metadata states the architecture, so small models in real SD architectures "
                "load without shape guessing. Full-size SD checkpoints load with core 'Load Checkpoint'."),
            search_aliases=["bundle", "toy model", "demo model", "tiny checkpoint"],
            inputs=[
                io.Combo.Input(
                    "bundle_name", options=filenames(BUNDLES, "checkpoints"),
                    tooltip="A .safetensors bundle from models/videoldm_bundles (the pack's toy family is listed "
                            "too) or models/checkpoints."),
            ],
            outputs=[
                io.Model.Output(display_name="MODEL", tooltip="The bundle's UNet, ready for core samplers."),
                io.Clip.Output(display_name="CLIP", tooltip="The bundle's CLIP text encoder, for core CLIP Text Encode."),
                io.Vae.Output(display_name="VAE", tooltip="The bundle's KL autoencoder, for core VAE Decode/Encode."),
            ],
        )

    @classmethod
    @override
    def execute(cls, bundle_name) -> io.NodeOutput:
        checked_inputs(cls, locals())
        return io.NodeOutput(*load_bundle(bundle_name))
