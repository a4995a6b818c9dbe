"""ComfyUI importable and configured in a process ComfyUI did not start (the training CLI, the dev
tools): its folder on sys.path and its command line parsed once. ComfyUI reads its arguments when
`comfy.cli_args` is first imported, and only when told to; nothing of ComfyUI is imported here
before that."""

from __future__ import annotations

import sys
from pathlib import Path


def init_comfyui(comfyui_dir: str | Path, args: list[str]) -> None:
    """Makes `comfy`, `folder_paths`, ... importable with `args` as ComfyUI's command line (e.g.
    ["--cpu"]). A process where ComfyUI is already configured is left as it is."""
    if "comfy.cli_args" in sys.modules:
        return
    if str(comfyui_dir) not in sys.path:
        sys.path.insert(0, str(comfyui_dir))
    import comfy.options

    comfy.options.enable_args_parsing(True)
    argv, sys.argv = sys.argv, [sys.argv[0], *args]
    try:
        import comfy.cli_args  # noqa: F401  (parses the arguments above)
    finally:
        sys.argv = argv
