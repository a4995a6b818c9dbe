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
from contextlib import contextmanager

import folder_paths

from ..videoldm_core.confined_paths import real, within
from ..videoldm_core.errors import VideoLDMError, shown
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
                            f"{shown(folder)}. Put the clips in a folder under ComfyUI's input folder and name it.")
    return real(path)


NAME_MAX = 255   # bytes in one file or folder name: ext4, XFS, btrfs, APFS; NTFS counts 255 characters
WINDOWS = os.name == "nt"
# what a Windows file or folder name cannot hold: these characters, a dot or space at its end (dropped
# silently), a device's name, with any extension (CON, nul.txt)
WINDOWS_FORBIDDEN = frozenset('<>:"|?*') | frozenset(map(chr, range(32)))
WINDOWS_DEVICES = frozenset({"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$",
                             *(f"{port}{i}" for port in ("COM", "LPT") for i in (*"0123456789", "¹", "²", "³"))})


def windows_name_problem(name: str, stem: bool = False) -> str | None:
    """What in one folder name Windows cannot hold, or None; `stem`: a file name the save extends
    (an extension follows it: a dot or space at its end is kept)."""
    if name in (".", ".."):
        return None
    forbidden = sorted({c for c in name if c in WINDOWS_FORBIDDEN})
    if forbidden:
        return f"the character(s) {' '.join(map(repr, forbidden))}"
    if name.endswith((".", " ")) and not stem:
        return "a dot or space at the end of a folder name"
    if name.split(".")[0].rstrip(" ").upper() in WINDOWS_DEVICES:
        return f"the device name {name.split('.')[0]!r}"
    return None


def name_problem(root: str, relative: str, kind: str, suffix: str = "") -> str | None:
    """Why `root/relative` + `suffix` cannot be a file the pack writes inside `root`, or None: it lies
    outside (by real path: no `..`, no symlink out), or a file or folder name in it is longer than the
    filesystem takes (found before the work whose result it would hold, not when saving it).
    `suffix`: what the save adds to the name given (a counter, the extension)."""
    path = os.path.join(root, relative + suffix)
    if os.path.isabs(relative) or not within(path, [root]) or real(path) == real(root):
        return f"expected a file name inside {kind}, found {shown(relative)}."
    parts = relative.replace(os.sep, "/").split("/")
    *folders, name = (len(part.encode("utf-8", "surrogateescape")) for part in parts)
    windows = WINDOWS and next(filter(None, (windows_name_problem(part, stem=i == len(parts) - 1)
                                             for i, part in enumerate(parts))), None)
    if windows:   # found here, not when the trained adapter is saved
        return (f"expected a name Windows can hold inside {kind}, found {windows} in {shown(relative)} (not allowed: "
                "< > : \" | ? * and control characters, a dot or space ending a folder name, device names such as "
                "CON or NUL); choose another name.")
    room = NAME_MAX - len(suffix.encode())
    if name > room:
        added = f" (the save adds {suffix!r})" if suffix else ""
        return (f"expected a file name of at most {room} bytes inside {kind}{added}, found {name} bytes in "
                f"{shown(relative)}; choose a shorter name.")
    if any(size > NAME_MAX for size in folders):
        return (f"expected folder names of at most {NAME_MAX} bytes inside {kind}, found one of {max(folders)} bytes "
                f"in {shown(relative)}; choose a shorter name.")
    return None


def file_inside(root: str, relative: str, kind: str) -> str:
    """`root/relative` when it really lies inside `root` and its names fit the filesystem, its folders
    created; else an error naming `kind` (e.g. "models/temporal_adapters") and what was given."""
    problem = name_problem(root, relative, kind)
    if problem is not None:
        raise VideoLDMError(problem)
    path = real(os.path.join(root, relative))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return path


@contextmanager
def writing(name: str, kind: str, input_name: str):
    """A failed write (a full disk, no permission) as an error naming the input and the file, with no
    server path (an OSError's text names the whole path; its strerror does not)."""
    try:
        yield
    except OSError as e:
        raise VideoLDMError(f"{input_name}: could not write {shown(name)} in {kind}: {e.strerror or e}.") from None
