"""The model folders the pack reads, registered with ComfyUI's folder_paths.

One folder key per kind of file, so each loader lists only what it can read:
- `videoldm_bundles`: Video LDM bundles (Load Video LDM Bundle; Load Temporal VAE reads their VAE);
- `temporal_adapters`: temporal layers for a UNet (Load Temporal Adapter; Save and train write here);
- `temporal_decoders`: temporal-decoder add-ons for a VAE (Load Temporal VAE).
Each key is `models/<key>` first, then the pack's own toy family (`toy/<kind>/` in this folder,
registered in place, never copied), so a file of the user's wins over a toy file of the same name.
"""

import logging
import os

import folder_paths

BUNDLES = "videoldm_bundles"
TEMPORAL_ADAPTERS = "temporal_adapters"
TEMPORAL_DECODERS = "temporal_decoders"
TOY_FAMILY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "toy")
TOY_FOLDERS = {BUNDLES: "bundles", TEMPORAL_ADAPTERS: "temporal_adapters", TEMPORAL_DECODERS: "temporal_decoders"}


def register_model_folders():
    """Registers the three keys (paths the user configured for them are kept), lists AnimateDiff
    users' motion modules (`models/animatediff_models` and any paths another pack or
    extra_model_paths.yaml gave that key) as temporal adapters, and creates
    `models/temporal_adapters`, where Save Temporal Adapter and training write."""
    for key, toy_folder in TOY_FOLDERS.items():
        folder_paths.add_model_folder_path(key, os.path.join(folder_paths.models_dir, key), is_default=True)
        folder_paths.add_model_folder_path(key, os.path.join(TOY_FAMILY, toy_folder))
    animatediff_paths = [os.path.join(folder_paths.models_dir, "animatediff_models")]
    if "animatediff_models" in folder_paths.folder_names_and_paths:
        animatediff_paths += folder_paths.folder_names_and_paths["animatediff_models"][0]
    for path in animatediff_paths:
        folder_paths.add_model_folder_path(TEMPORAL_ADAPTERS, path)
    for key in TOY_FOLDERS:
        paths, _ = folder_paths.folder_names_and_paths[key]
        folder_paths.folder_names_and_paths[key] = (paths, set(folder_paths.supported_pt_extensions))
    save_folder = folder_paths.get_folder_paths(TEMPORAL_ADAPTERS)[0]
    try:
        os.makedirs(save_folder, exist_ok=True)
    except OSError as e:
        logging.warning("Video LDM: could not create %s (%s); Save Temporal Adapter will fail until it exists.",
                        save_folder, e.strerror)


def filenames(*keys: str) -> list[str]:
    """The files of several folder keys in one list, in key order, each name once."""
    return list(dict.fromkeys(name for key in keys for name in folder_paths.get_filename_list(key)))


def full_path(name: str, *keys: str) -> str:
    """The file `name` from the first of `keys` that has it (ComfyUI's not-found error otherwise)."""
    for key in keys[:-1]:
        path = folder_paths.get_full_path(key, name)
        if path is not None:
            return path
    return folder_paths.get_full_path_or_raise(keys[-1], name)
