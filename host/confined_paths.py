"""The folders an API prompt can name: where Train Temporal Adapter reads clips, where the pack
writes files. Every check is on the real path (videoldm_core/confined_paths.py), and no message
names a server path or says whether something outside exists.

Training folders are ComfyUI's input folder and its subfolders, plus the folders the server's
operator lists in the environment variable VIDEOLDM_TRAINING_FOLDERS (absolute paths separated
by the system's path separator, ':' on Linux and macOS): something only whoever starts the server
sets, never an API client. The CLI (train.py), run by the operator, reads any folder.
"""

from __future__ import annotations

import os

import folder_paths

from ..videoldm_core.confined_paths import real, within
from ..videoldm_core.errors import VideoLDMError
from ..videoldm_core.training.objective import TrainingError

TRAINING_FOLDERS_VARIABLE = "VIDEOLDM_TRAINING_FOLDERS"


def operator_training_folders() -> list[str]:
    """The absolute folders listed in VIDEOLDM_TRAINING_FOLDERS (relative entries are ignored)."""
    listed = os.environ.get(TRAINING_FOLDERS_VARIABLE, "")
    folders = (p.strip() for p in listed.split(os.pathsep))
    return [real(p) for p in folders if p and os.path.isabs(p)]


def training_roots() -> list[str]:
    return [real(folder_paths.get_input_directory()), *operator_training_folders()]


def training_folder(folder: str) -> str:
    """The real path of the training folder an API prompt names: relative to ComfyUI's input
    folder, or absolute inside a folder the operator listed; refused otherwise, in the same words
    whether or not it exists."""
    name = folder.strip()
    path = name if os.path.isabs(name) else os.path.join(folder_paths.get_input_directory(), name)
    if not name or not within(path, training_roots()) or not os.path.isdir(path):
        where = "ComfyUI's input folder (a name like 'my_clips' for input/my_clips)"
        if operator_training_folders():
            where += f" or a folder the server's operator listed in {TRAINING_FOLDERS_VARIABLE}"
        raise TrainingError(f"expected a folder of videos or frame folders inside {where}, found no such folder named "
                            f"{folder!r}. Put the clips in a folder under ComfyUI's input folder and name it.")
    return real(path)


def file_inside(root: str, relative: str, kind: str) -> str:
    """`root/relative` when it really lies inside `root` (no `..`, no symlink out), its folders
    created; else an error naming `kind` (e.g. "models/temporal_adapters") and what was given."""
    path = os.path.join(root, relative)
    if os.path.isabs(relative) or not within(path, [root]) or real(path) == real(root):
        raise VideoLDMError(f"expected a file name inside {kind}, found {relative!r}.")
    path = real(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return path
