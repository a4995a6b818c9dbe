"""Writes the demo's random-weight bundle (real SD1.x architectures at tiny size).

Usage: python -m devtools.make_demo_bundle [OUT.safetensors]   (default: the scratch checkpoints folder)

Until the pack's own toy model family is trained, the demo runs on random weights: the video
it writes shows that the graph runs end to end, not a picture. A full-size random SD1.5 (about
2 GB, ~4 s per step on two CPU cores) would show nothing more, so the demo stays tiny on purpose.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

from . import paths
from .comfy_in_process import init_comfy

DEMO_BUNDLE_NAME = "videoldm_demo_tiny.safetensors"
DEMO_SEED = 20230418  # arXiv 2304.08818


def default_path() -> Path:
    return paths.base_dir() / "models" / "checkpoints" / DEMO_BUNDLE_NAME


def make_demo_bundle(out: Path) -> Path:
    pack = init_comfy()
    bundle_host = importlib.import_module(f"{pack.__name__}.nodes.bundle_host")
    bundle = importlib.import_module(f"{pack.__name__}.videoldm_core.bundle")
    spec = bundle_host.tiny_sd1_spec(description="Video LDM demo: random weights, a wiring demo, not a picture")
    state_dict = bundle_host.random_bundle_state_dict(spec, seed=DEMO_SEED)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".partial")
    bundle.save_bundle(tmp, spec, state_dict)
    tmp.replace(out)
    return out


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else default_path()
    print(make_demo_bundle(target))
