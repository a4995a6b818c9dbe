"""Importing the real ComfyUI (and the pack, by its installed name) inside this process.

ComfyUI parses its command line when `comfy.cli_args` is first imported, and only when told to;
`--cpu` is needed on machines without a GPU, `--base-directory` keeps every path in scratch.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

from . import paths


def init_comfy(base_dir: Path | None = None, extra_args: tuple[str, ...] = ()):
    """Makes `comfy`, `folder_paths`, `nodes`, ... importable and configured; returns the pack module."""
    comfy_dir = str(paths.comfyui_dir())
    base_dir = base_dir or paths.base_dir()
    if "comfy.cli_args" not in sys.modules:
        if comfy_dir not in sys.path:
            sys.path.insert(0, comfy_dir)
        import comfy.options
        comfy.options.enable_args_parsing(True)
        argv, sys.argv = sys.argv, [sys.argv[0], "--cpu", "--base-directory", str(base_dir), *extra_args]
        try:
            import comfy.cli_args  # noqa: F401  (parses sys.argv now)
        finally:
            sys.argv = argv
    custom_nodes = str(base_dir / "custom_nodes")
    if custom_nodes not in sys.path:
        sys.path.insert(0, custom_nodes)
    return importlib.import_module(paths.pack_module_name())
