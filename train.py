"""Train temporal layers from the command line, on one process or many (Video LDM §3).

    python train.py --config run.json
    torchrun --nproc_per_node 2 train.py --config run.json          # DDP, gloo on CPU / nccl on GPU
    torchrun --nnodes 2 --rdzv-endpoint host:29500 ... train.py --config run.json

The config names the base checkpoint (a ComfyUI checkpoint or a Video LDM bundle), the mode, the
data folder and the optimiser settings; see docs/development.md "Training". ComfyUI is found from --comfyui,
$COMFYUI_DIR, or the ComfyUI tree this pack is installed in (custom_nodes/<pack>).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
from pathlib import Path

PACK_DIR = Path(__file__).resolve().parent
PACK_ALIAS = "videoldm_pack"


def find_comfyui(given: str | None) -> Path:
    candidates = [given, os.environ.get("COMFYUI_DIR"), str(PACK_DIR.parent.parent)]
    for candidate in filter(None, candidates):
        path = Path(candidate)
        if (path / "comfy" / "sd.py").is_file() and (path / "folder_paths.py").is_file():
            return path
    raise SystemExit(f"ComfyUI not found: expected a ComfyUI tree (comfy/sd.py, folder_paths.py) at --comfyui, "
                     f"$COMFYUI_DIR or {PACK_DIR.parent.parent}; found none of {[c for c in candidates if c]}.")


def init_host(comfyui: Path, cpu: bool):
    """The pack as a package (its entry point is not run: no node is imported), then ComfyUI configured
    through the pack's host bootstrap (--cpu without a GPU); returns the training CLI module."""
    spec = importlib.util.spec_from_file_location(PACK_ALIAS, PACK_DIR / "__init__.py",
                                                  submodule_search_locations=[str(PACK_DIR)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACK_ALIAS] = module
    spec.loader.exec_module(module)
    bootstrap = importlib.import_module(f"{PACK_ALIAS}.host.bootstrap")
    bootstrap.init_comfyui(comfyui, ["--disable-auto-launch"] + (["--cpu"] if cpu else []))
    return importlib.import_module(f"{PACK_ALIAS}.host.training_cli")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="JSON run configuration.")
    parser.add_argument("--comfyui", help="ComfyUI folder (default: $COMFYUI_DIR or the tree this pack is installed in).")
    parser.add_argument("--cpu", action="store_true", help="Run on the CPU even when a GPU is present.")
    args = parser.parse_args(argv)
    import torch
    cli = init_host(find_comfyui(args.comfyui), cpu=args.cpu or not torch.cuda.is_available())
    return cli.run_config(args.config)


if __name__ == "__main__":
    sys.exit(main())
