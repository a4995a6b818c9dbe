"""Train temporal layers from the command line, on one process or many (Video LDM §3).

    python train.py --config run.json
    python train.py --make-shards clips/ --shards shards/clips-%06d.tar   # a folder of clips -> WebDataset shards
    torchrun --nproc_per_node 2 train.py --config run.json          # DDP, gloo on CPU / nccl on GPU
    torchrun --nnodes 2 --rdzv-endpoint host:29500 ... train.py --config run.json

A SIGTERM while it trains (a scheduler preempting the job, its time limit) stops the run after the step
in progress, with that step's checkpoint and exit status 143; the same command resumes it.

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


def load_pack():
    """The pack as a package under PACK_ALIAS, whatever its folder is called (its entry point is not
    run: no node is imported)."""
    spec = importlib.util.spec_from_file_location(PACK_ALIAS, PACK_DIR / "__init__.py",
                                                  submodule_search_locations=[str(PACK_DIR)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACK_ALIAS] = module
    spec.loader.exec_module(module)
    return module


def init_host(comfyui: Path, cpu: bool):
    """The pack (load_pack), then ComfyUI configured through the pack's host bootstrap (--cpu
    without a GPU); returns the training CLI module."""
    load_pack()
    bootstrap = importlib.import_module(f"{PACK_ALIAS}.host.bootstrap")
    bootstrap.init_comfyui(comfyui, ["--disable-auto-launch"] + (["--cpu"] if cpu else []))
    return importlib.import_module(f"{PACK_ALIAS}.host.training_cli")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    task = parser.add_mutually_exclusive_group(required=True)
    task.add_argument("--config", help="JSON run configuration.")
    task.add_argument("--make-shards", metavar="FOLDER",
                      help="Write the videos of FOLDER (with captions.json or sidecar .txt captions) as WebDataset shards.")
    parser.add_argument("--shards", metavar="PATTERN", help="With --make-shards: where, e.g. shards/clips-%%06d.tar.")
    parser.add_argument("--clips-per-shard", type=int, default=100, help="With --make-shards: samples per shard.")
    parser.add_argument("--comfyui", help="ComfyUI folder (default: $COMFYUI_DIR or the tree this pack is installed in).")
    parser.add_argument("--cpu", action="store_true", help="Run on the CPU even when a GPU is present.")
    args = parser.parse_args(argv)
    if args.make_shards:
        return make_shards(args, parser)
    import torch
    cpu = args.cpu or not torch.cuda.is_available()
    if not cpu:
        pin_local_gpu()
    cli = init_host(find_comfyui(args.comfyui), cpu=cpu)
    return cli.run_config(args.config)


def pin_local_gpu():
    """Under torchrun, this rank's GPU (LOCAL_RANK) becomes the current device before ComfyUI is
    imported: importing it measures the current device's memory, which opened a CUDA context on GPU 0
    from every rank (0.3 to 0.5 GB each, that no memory plan counts)."""
    import torch

    local_rank = os.environ.get("LOCAL_RANK")
    if local_rank is None:
        return
    if int(local_rank) >= torch.cuda.device_count():
        raise SystemExit(f"rank with LOCAL_RANK {local_rank} sees {torch.cuda.device_count()} GPU(s): run as many "
                         "processes per node as the GPUs each may use (torchrun --nproc_per_node), and check "
                         "CUDA_VISIBLE_DEVICES.")
    torch.cuda.set_device(int(local_rank))


def make_shards(args, parser) -> int:
    if not args.shards or "%" not in args.shards:
        parser.error("--make-shards needs --shards PATTERN with a %d-style shard number, e.g. shards/clips-%06d.tar")
    load_pack()
    shards = importlib.import_module(f"{PACK_ALIAS}.videoldm_core.training.shards")
    report = shards.write_shards(args.make_shards, args.shards, args.clips_per_shard)
    print(f"wrote {report['clips']} clips into {report['shards']} shard(s) {args.shards}", flush=True)
    if report["left_out"]:
        print(f"left out (folders of images, not videos): {', '.join(report['left_out'])}", flush=True)
    return 0


if __name__ == "__mp_main__":
    # a process started by 'spawn' (macOS and Windows: the streamed data's DataLoader workers) runs this
    # file under this name and unpickles the pack's objects it was given: they live in PACK_ALIAS
    load_pack()

if __name__ == "__main__":
    # under torchrun, a rank's error and traceback reach the launcher's summary (else "traceback: To enable
    # traceback see ..."), which names the rank that failed first
    from torch.distributed.elastic.multiprocessing.errors import record
    sys.exit(record(main)())
