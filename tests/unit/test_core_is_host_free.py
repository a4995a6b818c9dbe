"""videoldm_core is a host-independent library: importing all of it never imports ComfyUI."""

import pkgutil
import subprocess
import sys

import videoldm_core

from devtools.paths import REPO_ROOT


def test_importing_every_core_module_imports_no_comfy_module():
    modules = [m.name for m in pkgutil.walk_packages(videoldm_core.__path__, "videoldm_core.")]
    assert "videoldm_core.bundle" in modules
    code = ("import importlib, sys\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            "bad = sorted(m for m in sys.modules if m == 'comfy' or m.startswith(('comfy.', 'comfy_api', 'folder_paths')))\n"
            "print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"videoldm_core imported host modules: {out.stdout}"
