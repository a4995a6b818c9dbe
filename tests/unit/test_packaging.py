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
# the training extra (requirements-train.txt): imported only by the training CLI's shard reader and
# its TensorBoard log (which writes the validation video's summary with tensorboard's own protobuf)
TRAINING_EXTRA = {"webdataset": "webdataset", "braceexpand": "braceexpand", "tensorboard": "tensorboard"}
TRAINING_EXTRA_USERS = {"webdataset": {"videoldm_core/training/shards.py"}, "braceexpand": {"videoldm_core/training/shards.py"},
                        "tensorboard": {"videoldm_core/training/monitor.py"}}


def runtime_imports() -> dict[str, set[str]]:
    """Third-party module -> the runtime files that import it."""
    files = []
    for entry in RUNTIME:
        path = REPO_ROOT / entry
        files += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    found: dict[str, set[str]] = {}
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name.split(".")[0] for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module.split(".")[0]]
            for name in names:
                found.setdefault(name, set()).add(str(path.relative_to(REPO_ROOT)))
    return {m: users for m, users in found.items()
            if m not in sys.stdlib_module_names and m not in HOST_MODULES | PACK_MODULES}


def requirement_names(lines) -> set[str]:
    return {re.split(r"[<>=!~\[ ;]", line.strip())[0].lower() for line in lines if line.strip() and not line.startswith("#")}


def test_requirements_are_exactly_the_runtime_imports():
    imported = set(runtime_imports()) - set(TRAINING_EXTRA)
    assert imported <= set(HOST_PROVIDED), f"imported but neither required nor brought by ComfyUI: {imported - set(HOST_PROVIDED)}"
    required = requirement_names((REPO_ROOT / "requirements.txt").read_text().splitlines())
    assert required <= {HOST_PROVIDED[m].lower() for m in imported}, "requirements.txt names a library the pack never imports"
    assert required == {"einops", "safetensors"}   # ComfyUI brings them too; the pack states the versions it needs
    assert "torch" not in required


def test_the_training_extra_is_imported_only_by_the_shard_reader_and_the_log_and_listed_twice():
    imports = runtime_imports()
    assert {m: imports[m] for m in TRAINING_EXTRA} == TRAINING_EXTRA_USERS
    listed = requirement_names((REPO_ROOT / "requirements-train.txt").read_text().splitlines())
    assert listed == set(TRAINING_EXTRA.values())
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    assert requirement_names(project["optional-dependencies"]["train"]) == listed
    for user in set().union(*TRAINING_EXTRA_USERS.values()):
        top_level = [n for n in ast.parse((REPO_ROOT / user).read_text()).body if isinstance(n, (ast.Import, ast.ImportFrom))]
        assert not {(getattr(n, "module", None) or n.names[0].name).split(".")[0] for n in top_level} & set(TRAINING_EXTRA), \
            f"{user} imports the extra at module level: the pack would need the extra to import"


def test_pyproject_has_what_the_comfy_registry_requires():
    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    meta, comfy = project["project"], project["tool"]["comfy"]
    assert re.fullmatch(r"[A-Za-z][A-Za-z0-9]*(?:[-_.][A-Za-z0-9]+)*", meta["name"]) and len(meta["name"]) < 100
    assert re.fullmatch(r"\d+\.\d+\.\d+", meta["version"])
    assert meta["license"] == {"file": "LICENSE"} and (REPO_ROOT / "LICENSE").is_file()
    assert "License :: OSI Approved :: GNU General Public License v3 or later (GPLv3+)" in meta["classifiers"]
    for extra, requirements in meta["optional-dependencies"].items():   # a key misplaced under this table reads as an extra
        for requirement in requirements:
            Requirement(requirement)   # raises on anything that is not a PEP 508 requirement
    assert meta["urls"]["Repository"].startswith("https://")
    assert comfy["PublisherId"] and comfy["DisplayName"]
    assert requirement_names(meta["dependencies"]) == requirement_names((REPO_ROOT / "requirements.txt").read_text().splitlines())
    tested = Version("0.30.0")   # the ComfyUI devtools/setup.sh installs and every tier runs against
    assert tested in SpecifierSet(comfy["requires-comfyui"])
