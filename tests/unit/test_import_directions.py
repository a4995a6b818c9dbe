"""Imports go one way through the pack: nodes -> host -> core (videoldm_core), and train.py and the
host never reach the node layer. Read off the source (every import statement, at any depth), so a
lazy import inside a function counts as much as one at the top."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from devtools.paths import REPO_ROOT

LAYERS = ("nodes", "host", "videoldm_core")   # top to bottom
ALLOWED = {
    "nodes": {"host", "videoldm_core"},
    "host": {"videoldm_core"},
    "videoldm_core": set(),
}
SHARED_NODE_MODULES = {"io_types"}   # the IO types and shared inputs: what node modules may import from each other


def pack_imports(path: Path) -> list[tuple[int, str]]:
    """(line, dotted target inside the pack) of every relative import in `path`; absolute
    `videoldm_core...` imports count too (tests and tools use them)."""
    package = path.relative_to(REPO_ROOT).parent.parts
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[:len(package) - (node.level - 1)] if node.level > 1 else package
            if node.level - 1 > len(package):
                continue
            target = ".".join([*base, *(node.module.split(".") if node.module else [])])
            if node.module is None:   # `from . import x`: each name is a module or a package attribute
                out += [(node.lineno, f"{target}.{alias.name}".strip(".")) for alias in node.names]
            else:
                out.append((node.lineno, target))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in LAYERS:
            out.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] in LAYERS]
    return out


def layer_files(layer: str) -> list[Path]:
    return sorted((REPO_ROOT / layer).rglob("*.py"))


@pytest.mark.parametrize("layer", LAYERS)
def test_each_layer_imports_only_the_layers_below_it(layer):
    files = layer_files(layer)
    assert files, f"no Python files in {layer}/"
    wrong = []
    for path in files:
        for line, target in pack_imports(path):
            top = target.split(".")[0]
            if top not in LAYERS or top == layer and layer != "nodes":
                continue
            if top == "nodes" and layer == "nodes":
                module = target.split(".")[1] if "." in target else ""
                if path.name == "__init__.py" or path.name == "extension.py" or module in SHARED_NODE_MODULES:
                    continue   # the package gathers its nodes; extension registers them
                wrong.append(f"{path.relative_to(REPO_ROOT)}:{line} imports {target} (node modules share only io_types)")
            elif top not in ALLOWED[layer]:
                wrong.append(f"{path.relative_to(REPO_ROOT)}:{line} imports {target}")
    assert not wrong, "imports against the direction nodes -> host -> videoldm_core:\n" + "\n".join(wrong)


def test_the_training_cli_reaches_the_host_not_the_nodes():
    source = (REPO_ROOT / "train.py").read_text()
    assert ".host.training_cli" in source
    assert ".nodes" not in source and "nodes." not in source


def test_the_checker_sees_a_wrong_import(tmp_path, monkeypatch):
    """The checker itself: an upward import in a host-layer file is found (also inside a function)."""
    fake = REPO_ROOT / "host" / "_direction_probe.py"
    fake.write_text("def f():\n    from ..nodes.guidance import ContextGuiderNode\n")
    try:
        assert (2, "nodes.guidance") in pack_imports(fake)
        with pytest.raises(AssertionError, match="_direction_probe.py:2 imports nodes.guidance"):
            test_each_layer_imports_only_the_layers_below_it("host")
    finally:
        fake.unlink()


def test_the_node_interface_is_a_versioned_comfy_api():
    """Nodes import ComfyUI's V3 interface by version (`comfy_api.v0_0_2`, which ComfyUI keeps as
    later versions arrive), never `comfy_api.latest`, which changes under the pack."""
    found = {}
    for path in sorted((REPO_ROOT / "nodes").glob("*.py")) + [REPO_ROOT / "__init__.py"]:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("comfy_api"):
                found.setdefault(node.module, []).append(path.name)
    assert found and set(found) == {"comfy_api.v0_0_2"}, found
