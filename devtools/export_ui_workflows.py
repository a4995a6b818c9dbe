"""Writes the UI graph (`workflows/<name>.json`) of every API prompt `workflows/api/<name>.json`
(and `workflows/recipes/<name>.json` of `workflows/recipes/api/<name>.json`, `workflows/long/...`),
using the real frontend's own API-to-graph converter, so the twin opens in the graph editor, laid
out in stage groups (devtools.graph_layout), and a fit-to-view screenshot of it as opened
(`docs/graphs/<name>.png`, `docs/graphs/recipes/<name>.png`, shown by the README).

Usage: python -m devtools.export_ui_workflows [names...]   (after devtools/setup.sh)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from . import paths
from .browser import Frontend
from .comfy_server import ComfyServer
from .graph_layout import lay_out

SCREENSHOTS = paths.REPO_ROOT / "docs" / "graphs"


def public_file_names() -> Path:
    """An extra-model-paths config listing empty files under the public names the recipes load
    (devtools.public_checkpoints), so their screenshots show the graph as a user who downloaded
    them sees it, not the frontend's missing-model outline."""
    from . import public_checkpoints as public

    root = paths.scratch_dir() / "public_file_names"
    names = {"checkpoints": [public.SD15_CHECKPOINT, public.SDXL_CHECKPOINT, public.SVD_CHECKPOINT, public.X4_CHECKPOINT],
             "animatediff_models": list(public.MOTION_MODULES), "loras": [public.ANIMATELCM_LORA]}
    for folder, files in names.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for name in files:
            (root / folder / name).touch()
    config = root / "extra_model_paths.yaml"
    config.write_text("public_file_names:\n" + f"  base_path: {root}\n"
                      + "".join(f"  {folder}: {folder}\n" for folder in names))
    return config


def main(names: list[str]) -> int:
    api_files = [f for folder in (paths.API_PROMPTS, paths.RECIPE_PROMPTS, paths.LONG_PROMPTS) for f in sorted(folder.glob("*.json"))]
    if names:
        api_files = [f for f in api_files if f.stem in names]
    with ComfyServer(extra_args=("--extra-model-paths-config", str(public_file_names()))) as server:
        frontend = Frontend(server.url)
        try:
            for api_file in api_files:
                workflow = frontend.load_api_prompt(json.loads(api_file.read_text()))
                workflow["extra"] = {k: v for k, v in workflow.get("extra", {}).items() if k != "ds"}
                workflow = lay_out(workflow, api_file.stem)
                ui_folder = api_file.parent.parent   # workflows/, workflows/recipes/ or workflows/long/
                out = ui_folder / f"{api_file.stem}.json"
                out.write_text(json.dumps(workflow, indent=1) + "\n")
                frontend.load_workflow(workflow)
                shots = SCREENSHOTS / ui_folder.relative_to(paths.WORKFLOWS)
                shots.mkdir(parents=True, exist_ok=True)
                frontend.fit_view_screenshot(shots / f"{api_file.stem}.png")
                print(out.relative_to(paths.REPO_ROOT))
        finally:
            frontend.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
