"""The model folders the pack reads, registered with ComfyUI's folder_paths."""

import os

import folder_paths

from .temporal_adapter import TEMPORAL_ADAPTERS


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
