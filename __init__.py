"""Video LDM node pack for ComfyUI: "Align your Latents" (Blattmann et al., CVPR 2023).

Entry point for ComfyUI (V3): registers the pack's model folders, its help pages (web/docs)
and its nodes. Licensed GPL-3.0-or-later.
"""

import os

import folder_paths
from comfy_api.latest import ComfyExtension, io

from .nodes import NODES

WEB_DIRECTORY = "./web"

TEMPORAL_ADAPTERS = "temporal_adapters"


def register_model_folders():
    """`models/temporal_adapters` is the pack's own folder; AnimateDiff users' motion modules in
    `models/animatediff_models` (and any paths another pack or extra_model_paths.yaml gave that
    key) are listed too. Paths the user configured for our key are kept."""
    folder_paths.add_model_folder_path(
        TEMPORAL_ADAPTERS, os.path.join(folder_paths.models_dir, TEMPORAL_ADAPTERS), is_default=True)
    animatediff_paths = [os.path.join(folder_paths.models_dir, "animatediff_models")]
    if "animatediff_models" in folder_paths.folder_names_and_paths:
        animatediff_paths += folder_paths.folder_names_and_paths["animatediff_models"][0]
    for path in animatediff_paths:
        folder_paths.add_model_folder_path(TEMPORAL_ADAPTERS, path)
    paths, _ = folder_paths.folder_names_and_paths[TEMPORAL_ADAPTERS]
    folder_paths.folder_names_and_paths[TEMPORAL_ADAPTERS] = (paths, set(folder_paths.supported_pt_extensions))


class VideoLDMExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)


async def comfy_entrypoint() -> VideoLDMExtension:
    register_model_folders()
    return VideoLDMExtension()
