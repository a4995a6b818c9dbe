"""The pack installed the way the README tells a user to: its files (what `git clone` gives: the
tracked files, plus new files not yet committed) copied into `<base>/custom_nodes/<folder>`, a
folder whose name has a hyphen as the README's clone command gives it, then
`pip install -r requirements.txt` with the server's Python. No model step: the templates run on the
toy family the pack ships and registers itself.

Usage: python -m devtools.install_copy BASE_DIR [FOLDER]
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from . import paths

README_FOLDER = "comfyui-videoldm"


def pack_files() -> list[Path]:
    """Paths relative to the checkout: `git ls-files` (tracked, and untracked but not ignored)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=paths.REPO_ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    return [Path(name) for name in listed if name and (paths.REPO_ROOT / name).is_file()]


def install_pack(base_dir: Path, folder: str = README_FOLDER, python: str = sys.executable) -> Path:
    """A fresh copy of the pack in `base_dir/custom_nodes/folder` (an older copy there is replaced)
    with its requirements installed; returns the pack's folder."""
    target = base_dir / "custom_nodes" / folder
    if target.exists():
        shutil.rmtree(target)
    for name in pack_files():
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(paths.REPO_ROOT / name, target / name)
    pip = subprocess.run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check", "-r",
                          str(target / "requirements.txt")], capture_output=True, text=True)
    if pip.returncode != 0:
        raise RuntimeError(f"pip install -r requirements.txt failed in {target}:\n{pip.stderr[-3000:]}")
    return target


if __name__ == "__main__":
    print(install_pack(Path(sys.argv[1]), *sys.argv[2:3]))
