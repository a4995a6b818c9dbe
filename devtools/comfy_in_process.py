"""Importing the real ComfyUI (and the pack, by its installed name) inside this process.

ComfyUI parses its command line when `comfy.cli_args` is first imported, and only when told to;
`--cpu` is needed on machines without a GPU (benchmarks on a GPU pass `cpu=False`),
`--base-directory` keeps every path in scratch.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

from . import paths


def init_comfy(base_dir: Path | None = None, extra_args: tuple[str, ...] = (), cpu: bool = True):
    """Makes `comfy`, `folder_paths`, `nodes`, ... importable and configured (the pack's own host
    bootstrap, as the training CLI uses); returns the pack module, imported by its installed name."""
    base_dir = base_dir or paths.base_dir()
    custom_nodes = str(base_dir / "custom_nodes")
    if custom_nodes not in sys.path:
        sys.path.insert(0, custom_nodes)
    pack = importlib.import_module(paths.pack_module_name())   # light: its entry point imports the nodes
    bootstrap = importlib.import_module(f"{pack.__name__}.host.bootstrap")
    bootstrap.init_comfyui(paths.comfyui_dir(), [*(["--cpu"] if cpu else []), "--base-directory", str(base_dir), *extra_args])
    return pack
