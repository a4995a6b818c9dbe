"""Writes the UI graph (`workflows/<name>.json`) of every API prompt `workflows/api/<name>.json`,
using the real frontend's own API-to-graph converter, so the twin opens in the graph editor.

Usage: python -m devtools.export_ui_workflows [names...]   (needs the demo models; run devtools/demo.sh once)
"""

from __future__ import annotations

import json
import sys

from . import paths
from .browser import Frontend
from .comfy_server import ComfyServer


def main(names: list[str]) -> int:
    api_files = sorted(paths.API_PROMPTS.glob("*.json"))
    if names:
        api_files = [f for f in api_files if f.stem in names]
    with ComfyServer() as server:
        frontend = Frontend(server.url)
        try:
            for api_file in api_files:
                workflow = frontend.load_api_prompt(json.loads(api_file.read_text()))
                workflow["extra"] = {k: v for k, v in workflow.get("extra", {}).items() if k != "ds"}
                out = paths.ui_graph(api_file.stem)
                out.write_text(json.dumps(workflow, indent=1) + "\n")
                print(out.relative_to(paths.REPO_ROOT))
        finally:
            frontend.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
