"""Where set-up put things (devtools/setup.sh writes .cache/setup.env; the env wins)."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def _setup_env() -> dict[str, str]:
    path = Path(os.environ.get("VIDEOLDM_CACHE", REPO_ROOT / ".cache")) / "setup.env"
    if not path.exists():
        return {}
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


def setting(name: str) -> str:
    value = os.environ.get(name) or _setup_env().get(name)
    if not value:
        raise RuntimeError(f"{name} is not set: run devtools/setup.sh first (devtools/test.sh and devtools/demo.sh do).")
    return value


def comfyui_dir() -> Path:
    return Path(setting("COMFYUI_DIR"))


def scratch_dir() -> Path:
    return Path(setting("VIDEOLDM_SCRATCH"))


def base_dir() -> Path:
    """The scratch ComfyUI --base-directory whose custom_nodes/ links to this checkout."""
    return scratch_dir() / "base"


def pack_module_name() -> str:
    return setting("VIDEOLDM_PACK_LINK")


# Example graphs: workflows/<name>.json are the UI graphs ComfyUI lists as the pack's templates;
# workflows/api/<name>.json are their API twins (POST /prompt), in a subfolder ComfyUI does not list.
WORKFLOWS = REPO_ROOT / "workflows"
API_PROMPTS = WORKFLOWS / "api"


# Recipes for the public weights users own: workflows/recipes/<name>.json (UI) and
# workflows/recipes/api/<name>.json; ComfyUI lists only workflows/*.json as templates, not these.
RECIPES = WORKFLOWS / "recipes"
RECIPE_PROMPTS = RECIPES / "api"

# Long renders: toy-family graphs that run for minutes (workflows/long/<name>.json, api/<name>.json);
# opened by the browser tier, run by hand (README: what they take), not by the test runs.
LONG = WORKFLOWS / "long"
LONG_PROMPTS = LONG / "api"


def api_prompt(name: str) -> Path:
    return API_PROMPTS / f"{name}.json"


def recipe_prompt(name: str) -> Path:
    return RECIPE_PROMPTS / f"{name}.json"

