"""Server tier: the random-weight public-layout files of the recipe tests (about 14 GB) are
written once into the set-up cache, keyed by the code that writes them, and linked into each run's
base directory."""

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from devtools.paths import REPO_ROOT

WRITERS = ("devtools/public_checkpoints.py", "devtools/public_layouts.py", "devtools/unet_configs.py")


def public_files() -> Path:
    """The files of devtools.public_checkpoints in `<cache>/public_checkpoints-<digest of their code>`
    (an older digest's folder is removed)."""
    digest = hashlib.sha256(b"".join((REPO_ROOT / f).read_bytes() for f in WRITERS)).hexdigest()[:12]
    cache = Path(os.environ.get("VIDEOLDM_CACHE", REPO_ROOT / ".cache"))
    folder = cache / f"public_checkpoints-{digest}"
    for old in cache.glob("public_checkpoints-*"):
        if old != folder:
            shutil.rmtree(old, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "devtools.public_checkpoints", str(folder)], cwd=REPO_ROOT, check=True,
                   capture_output=True)   # writes only what is missing
    return folder


@pytest.fixture(scope="session")
def recipe_base(tmp_path_factory):
    """A ComfyUI base directory with the pack linked in, devtools.public_checkpoints' files in its
    model folders, a 32 px video `input/my_clip.mp4` and two 64 px clips in `input/my_clips/`."""
    from devtools.synthetic_data import write_mp4, write_users_video
    from tests.conftest import make_base_dir
    from videoldm_core.moving_shapes import moving_shapes_clip

    base = make_base_dir(tmp_path_factory.mktemp("recipes-base"))
    files = public_files()
    for path in files.rglob("*"):
        if path.is_file() and not path.name.endswith(".partial"):
            link = base / "models" / path.relative_to(files)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(path)
    (base / "input" / "my_clips").mkdir(parents=True)
    write_users_video(base / "input")
    for seed in (4, 5):
        write_mp4(base / "input" / "my_clips" / f"clip_{seed}.mp4", moving_shapes_clip(seed, 16, 64, 64, 8.0).frames, 8.0)
    return base
