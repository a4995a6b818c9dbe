"""Test tiers by directory: unit (videoldm_core, torch only), host (in-process ComfyUI),
server (a real ComfyUI server on loopback), browser (the real frontend in headless Chromium),
setup (devtools/setup.sh's handling of bad set-up input). The summary counts each tier."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import pytest
from devtools import tiny_bundles

REPO_ROOT = Path(__file__).resolve().parent.parent
TIERS = ("unit", "host", "server", "browser", "setup")

if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))  # `import videoldm_core`, `import devtools`

LONG_MARKERS = ("fuzz_long", "train_long")   # deselected in the default run, not skipped


def tier_of(item) -> str:
    parts = Path(str(item.fspath)).relative_to(REPO_ROOT / "tests").parts
    return parts[0] if parts and parts[0] in TIERS else "unit"


def pytest_collection_modifyitems(config, items):
    for item in items:
        item.add_marker(getattr(pytest.mark, tier_of(item)))
    for marker in LONG_MARKERS:   # long budgets and runs only when selected
        if marker not in (config.getoption("markexpr") or ""):
            long = [item for item in items if marker in item.keywords]
            if long:
                items[:] = [item for item in items if marker not in item.keywords]
                config.hook.pytest_deselected(items=long)


_outcomes: Counter = Counter()


def pytest_runtest_logreport(report):
    tier = next((t for t in TIERS if t in report.keywords), "unit")
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        _outcomes[(tier, report.outcome)] += 1


def pytest_terminal_summary(terminalreporter):
    terminalreporter.section("tests per tier")
    for tier in TIERS:
        counts = {o: _outcomes[(tier, o)] for o in ("passed", "failed", "skipped")}
        if any(counts.values()):
            terminalreporter.write_line(f"{tier:8s} " + "  ".join(f"{n} {o}" for o, n in counts.items()))


# --- shared fixtures -------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def return_freed_memory():
    """After each test module, the heap it freed goes back to the OS: glibc keeps freed blocks
    mapped, and the full-size oracle in tests/host left about 6 GB of them resident in this process
    (measured: 6954 MB, 847 MB after malloc_trim), memory the server tier's full-size recipe
    servers need on a 24 GB machine."""
    yield
    from devtools.process_memory import return_freed_heap

    return_freed_heap()


def make_base_dir(root: Path) -> Path:
    """A scratch ComfyUI --base-directory with this checkout linked in as the pack."""
    from devtools import paths

    (root / "custom_nodes").mkdir(parents=True, exist_ok=True)
    (root / "models" / "checkpoints").mkdir(parents=True, exist_ok=True)
    (root / "custom_nodes" / paths.pack_module_name()).symlink_to(REPO_ROOT, target_is_directory=True)
    return root


@pytest.fixture(scope="session")
def server_base_dir(tmp_path_factory) -> Path:
    """Base directory for the shared server: the pack plus the demo's random-weight models."""
    import subprocess

    base = make_base_dir(tmp_path_factory.mktemp("server-base"))
    subprocess.run([sys.executable, "-m", "devtools.make_demo_bundle", str(base)], cwd=REPO_ROOT, check=True,
                   capture_output=True)
    return base


@pytest.fixture(scope="session")
def server(server_base_dir):
    """One real ComfyUI server on a free loopback port for the server and browser tiers."""
    from devtools.comfy_server import ComfyServer

    with ComfyServer(base_dir=server_base_dir) as running:
        yield running


@pytest.fixture(scope="session")
def pack(tmp_path_factory):
    """Host tier: the real ComfyUI imported in this process (`--cpu`, a scratch base directory),
    with the pack imported by its installed name and its entry point run, as ComfyUI does."""
    import asyncio

    from devtools.comfy_in_process import init_comfy

    module = init_comfy(base_dir=make_base_dir(tmp_path_factory.mktemp("host-base")))
    asyncio.run(module.comfy_entrypoint())
    return module


@pytest.fixture(scope="session")
def pack_module(pack):
    """`pack_module("host.bundle")` imports a submodule of the pack under its installed name."""
    import importlib

    return lambda name: importlib.import_module(f"{pack.__name__}.{name}")


@pytest.fixture(scope="session")
def node_classes(pack):
    """Every node the pack registers, by node id, from its real extension object."""
    import asyncio

    extension = asyncio.run(pack.comfy_entrypoint())
    return {cls.define_schema().node_id: cls for cls in asyncio.run(extension.get_node_list())}


@pytest.fixture(scope="session")
def tiny_sd1(pack_module):
    """(MODEL, CLIP, VAE): a random-weight SD1.x-architecture model, built by the bundle code."""
    bundle_host = pack_module("host.bundle")
    spec = tiny_bundles.tiny_sd1_spec()
    return bundle_host.build_components(spec, tiny_bundles.random_bundle_state_dict(spec, seed=5), source="tiny")


@pytest.fixture(scope="session")
def tiny_x4_bundle(pack_module):
    """(MODEL, CLIP, VAE): ComfyUI's own SD x4 upscaler architecture at small width with a 4x KL VAE,
    random weights, built by the bundle code."""
    bundle_host = pack_module("host.bundle")
    spec = tiny_bundles.tiny_x4_spec()
    return bundle_host.build_components(spec, tiny_bundles.random_bundle_state_dict(spec, seed=4), source="tiny x4")


@pytest.fixture(scope="session")
def tiny_x4(tiny_x4_bundle):
    """MODEL: the tiny SD x4 upscaler."""
    return tiny_x4_bundle[0]
