"""What an installer reads: requirements.txt lists exactly the third-party libraries the pack
imports at run time that ComfyUI and torch do not already bring; pyproject.toml declares the same
dependencies and every field the Comfy Registry requires, with the ComfyUI range the pack is tested on."""

from __future__ import annotations

import ast
import re
import sys
import tomllib

from devtools.paths import REPO_ROOT

RUNTIME = ["__init__.py", "train.py", "nodes", "host", "videoldm_core"]
HOST_MODULES = {"comfy", "comfy_api", "comfy_extras", "folder_paths", "latent_preview", "nodes", "server", "node_helpers"}
PACK_MODULES = {"videoldm_core", "host"}
# import name -> distribution, for what ComfyUI 0.30.0's requirements.txt and torch bring
HOST_PROVIDED = {"torch": "torch", "numpy": "numpy", "PIL": "Pillow", "av": "av", "typing_extensions": "typing-extensions",
                 "einops": "einops", "safetensors": "safetensors"}


def runtime_imports() -> set[str]:
    files = []
    for entry in RUNTIME:
        path = REPO_ROOT / entry
        files += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    found = set()
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return {m for m in found if m not in sys.stdlib_module_names and m not in HOST_MODULES | PACK_MODULES}


def requirement_names(lines) -> set[str]:
    return {re.split(r"[<>=!~\[ ;]", line.strip())[0].lower() for line in lines if line.strip() and not line.startswith("#")}


def test_requirements_are_exactly_the_runtime_imports():
    imported = runtime_imports()
    assert imported <= set(HOST_PROVIDED), f"imported but neither required nor brought by ComfyUI: {imported - set(HOST_PROVIDED)}"
    required = requirement_names((REPO_ROOT / "requirements.txt").read_text().splitlines())
    assert required <= {HOST_PROVIDED[m].lower() for m in imported}, "requirements.txt names a library the pack never imports"
    assert required == {"einops", "safetensors"}   # ComfyUI brings them too; the pack states the versions it needs
    assert "torch" not in required


def test_pyproject_has_what_the_comfy_registry_requires():
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    meta, comfy = project["project"], project["tool"]["comfy"]
    assert re.fullmatch(r"[A-Za-z][A-Za-z0-9]*(?:[-_.][A-Za-z0-9]+)*", meta["name"]) and len(meta["name"]) < 100
    assert re.fullmatch(r"\d+\.\d+\.\d+", meta["version"])
    assert meta["license"] == {"file": "LICENSE"} and (REPO_ROOT / "LICENSE").is_file()
    assert meta["urls"]["Repository"].startswith("https://")
    assert comfy["PublisherId"] and comfy["DisplayName"]
    assert requirement_names(meta["dependencies"]) == requirement_names((REPO_ROOT / "requirements.txt").read_text().splitlines())
    tested = Version("0.30.0")   # the ComfyUI devtools/setup.sh installs and every tier runs against
    assert tested in SpecifierSet(comfy["requires-comfyui"])
