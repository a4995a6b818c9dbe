"""Browser tier: the real ComfyUI frontend in Debian's headless Chromium against the shared server.

Without Chromium the tier fails with an install hint; VIDEOLDM_SKIP_BROWSER=1 opts out (skips).
The default run and CI install Chromium (devtools/setup.sh), so the tier runs there."""

import os

import pytest

from devtools.browser import BrowserUnavailable, Frontend, find_browser


@pytest.fixture(scope="session")
def browser_binaries():
    try:
        return find_browser()
    except BrowserUnavailable as e:
        if os.environ.get("VIDEOLDM_SKIP_BROWSER") == "1":
            pytest.skip(f"VIDEOLDM_SKIP_BROWSER=1: {e}")
        pytest.fail(str(e), pytrace=False)


@pytest.fixture(scope="module")
def frontend(browser_binaries, server):
    """Closed after the tier's module: left open, the ComfyUI page kept headless Chromium busy (about
    one core, seen with top) through the host and server tiers that follow."""
    page = Frontend(server.url, browser_binaries)
    yield page
    page.close()
