"""Server tier: the random-weight public-layout files of the recipe tests are written once per run."""

import subprocess
import sys

import pytest

from devtools.paths import REPO_ROOT


@pytest.fixture(scope="session")
def recipe_base(tmp_path_factory):
    """A ComfyUI base directory with the pack linked in, devtools.public_checkpoints' files in its
    model folders, a 32 px video `input/my_clip.mp4` and two 64 px clips in `input/my_clips/`."""
    from devtools.synthetic_data import write_mp4
    from tests.conftest import make_base_dir
    from videoldm_core.moving_shapes import moving_shapes_clip

    base = make_base_dir(tmp_path_factory.mktemp("recipes-base"))
    subprocess.run([sys.executable, "-m", "devtools.public_checkpoints", str(base / "models")], cwd=REPO_ROOT, check=True,
                   capture_output=True)
    (base / "input" / "my_clips").mkdir(parents=True)
    write_mp4(base / "input" / "my_clip.mp4", moving_shapes_clip(3, 8, 32, 32, 8.0).frames, 8.0)
    for seed in (4, 5):
        write_mp4(base / "input" / "my_clips" / f"clip_{seed}.mp4", moving_shapes_clip(seed, 16, 64, 64, 8.0).frames, 8.0)
    return base
