"""The real ComfyUI frontend in Debian's headless Chromium, driven by Selenium + chromedriver.

Used by the browser test tier and by devtools/export_ui_workflows.py (which turns an API prompt
into its UI twin with the frontend's own converter).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass

INSTALL_HINT = ("install Debian's Chromium and its driver: 'sudo apt-get install chromium chromium-driver' "
                "(devtools/setup.sh does this when run as root), or set VIDEOLDM_SKIP_BROWSER=1 to skip the browser tier")

CHROMIUM_FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
    # The machines have a closed network: without these Chromium keeps trying Google hosts.
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--window-size=1400,900",
)


class BrowserUnavailable(RuntimeError):
    pass


@dataclass(frozen=True)
class BrowserBinaries:
    chromium: str
    chromedriver: str


def find_browser(env: dict | None = None) -> BrowserBinaries:
    """Chromium and chromedriver from $CHROMIUM/$CHROMEDRIVER or PATH; a clear error naming the fix."""
    env = os.environ if env is None else env
    path = env.get("PATH", "")
    chromium = env.get("CHROMIUM") or shutil.which("chromium", path=path) or shutil.which("chromium-browser", path=path)
    chromedriver = env.get("CHROMEDRIVER") or shutil.which("chromedriver", path=path)
    missing = [name for name, found in (("chromium", chromium), ("chromedriver", chromedriver))
               if not found or not os.access(found, os.X_OK)]
    if missing:
        raise BrowserUnavailable(f"the browser tier needs {' and '.join(missing)}, not found: {INSTALL_HINT}.")
    return BrowserBinaries(chromium, chromedriver)


class Frontend:
    """One headless Chromium with the ComfyUI frontend of `server_url` open."""

    def __init__(self, server_url: str, binaries: BrowserBinaries | None = None, timeout: float = 120):
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        binaries = binaries or find_browser()
        self.profile = tempfile.mkdtemp(prefix="videoldm-chromium-")
        options = webdriver.ChromeOptions()
        options.binary_location = binaries.chromium
        for flag in CHROMIUM_FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={self.profile}")
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        self.driver = webdriver.Chrome(service=Service(binaries.chromedriver), options=options)
        self.driver.set_script_timeout(timeout)
        self.server_url = server_url
        self.console: list[dict] = []
        self.open(timeout)

    def open(self, timeout: float):
        self.driver.get(self.server_url)
        deadline = time.monotonic() + timeout
        # `app.canvas` exists once the app has set up; reading `app.graph` earlier logs an error.
        while not self.driver.execute_script("return !!(window.app && window.app.canvas && window.LiteGraph)"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the ComfyUI frontend at {self.server_url} did not start within {timeout:.0f}s")
            time.sleep(0.2)
        # Node definitions are registered asynchronously after the canvas exists.
        while not self.driver.execute_script(
                "return window.app.vueAppReady && Object.keys(window.LiteGraph.registered_node_types).length > 0"):
            if time.monotonic() > deadline:
                raise TimeoutError("the frontend registered no node types")
            time.sleep(0.2)
        self.settle(deadline)

    def settle(self, deadline: float, quiet: float = 2.0):
        """Waits until the console has been quiet for `quiet` seconds (the frontend opens its
        default graph and checks its models after start-up), keeping what it logged."""
        last_entry = time.monotonic()
        while time.monotonic() - last_entry < quiet and time.monotonic() < deadline:
            if self.read_console():
                last_entry = time.monotonic()
            time.sleep(0.2)

    def read_console(self) -> list[dict]:
        """Console entries since the last call (they are also kept in `self.console`)."""
        entries = self.driver.get_log("browser")
        self.console.extend(entries)
        return entries

    def registered_node_types(self) -> set[str]:
        return set(self.driver.execute_script("return Object.keys(window.LiteGraph.registered_node_types)"))

    def _async(self, body: str, *args):
        """Runs `body` (async JS using `args`) and returns its result; JS exceptions come back as errors."""
        result = self.driver.execute_async_script(
            "const done = arguments[arguments.length - 1]; const args = Array.from(arguments).slice(0, -1);"
            f"(async () => {{ {body} }})().then(r => done({{ok: r}}), e => done({{error: String(e) + '\\n' + (e.stack || '')}}));",
            *args)
        if "error" in result:
            raise RuntimeError(f"frontend script failed: {result['error']}")
        return result["ok"]

    def load_workflow(self, workflow: dict) -> list[dict]:
        """Loads a UI workflow as the 'Open' menu does; returns each node's id, type and whether it is registered."""
        return self._async(
            "await window.app.loadGraphData(args[0], true, true, 'test-workflow');"
            "return window.app.graph.nodes.map(n => ({id: n.id, type: n.type,"
            "  registered: n.type in window.LiteGraph.registered_node_types}));", workflow)

    def load_api_prompt(self, prompt: dict) -> dict:
        """Opens an API prompt with the frontend's own converter; returns the resulting UI workflow."""
        return self._async("await window.app.loadApiJson(args[0], 'api-prompt.json');"
                           "return JSON.parse(JSON.stringify(window.app.graph.serialize()));", prompt)

    def graph_layout(self) -> dict:
        """The loaded graph as drawn: each node's bounding box (title bar included), each group's
        box and title, and every combo widget whose value is not among its options (a missing model)."""
        return self._async(
            "const g = window.app.graph; const th = window.LiteGraph.NODE_TITLE_HEIGHT;"
            "return {nodes: g.nodes.map(n => ({id: String(n.id), type: n.type, box: [n.pos[0], n.pos[1] - th, n.size[0], n.size[1] + th],"
            "  missing: (n.widgets || []).filter(w => w.type === 'combo' && Array.isArray(w.options?.values)"
            "    && !w.options.values.includes(w.value)).map(w => `${w.name}=${w.value}`)})),"
            " groups: g.groups.map(gr => ({title: gr.title, box: Array.from(gr._bounding || gr.bounding)}))};")

    def fit_view_screenshot(self, path, size=(1920, 1080)) -> float:
        """A PNG of the whole loaded graph fitted to a `size` window (a 1080p screen) in focus mode
        (the editor's menus hidden), as a user sees it after opening it; returns the zoom."""
        from selenium.webdriver.common.action_chains import ActionChains
        from selenium.webdriver.common.keys import Keys

        self.driver.set_window_size(*size)
        ActionChains(self.driver).send_keys(Keys.ESCAPE).perform()   # the templates dialog of a first start
        self._async("const w = window.app.extensionManager; w.focusMode = true;"
                    "await w.setting.set('Comfy.Minimap.Visible', false); await w.setting.set('Comfy.Graph.CanvasInfo', false);"
                    "await new Promise(r => setTimeout(r, 500));")
        scale = self._async(
            "const c = window.app.canvas, g = window.app.graph, th = window.LiteGraph.NODE_TITLE_HEIGHT;"
            "const boxes = g.nodes.map(n => [n.pos[0], n.pos[1] - th, n.size[0], n.size[1] + th])"
            "  .concat(g.groups.map(gr => Array.from(gr._bounding || gr.bounding)));"
            "const x0 = Math.min(...boxes.map(b => b[0])), y0 = Math.min(...boxes.map(b => b[1]));"
            "const x1 = Math.max(...boxes.map(b => b[0] + b[2])), y1 = Math.max(...boxes.map(b => b[1] + b[3]));"
            "const w = c.canvas.width / (window.devicePixelRatio || 1), h = c.canvas.height / (window.devicePixelRatio || 1);"
            "const scale = 0.95 * Math.min(w / (x1 - x0), h / (y1 - y0));"
            "c.ds.scale = scale; c.ds.offset = [(w / scale - (x1 - x0)) / 2 - x0, (h / scale - (y1 - y0)) / 2 - y0];"
            "c.setDirty(true, true); c.draw(true, true); await new Promise(r => setTimeout(r, 500)); return scale;")
        self.driver.save_screenshot(str(path))
        return scale

    def node_help(self, node_type: str, timeout_ms: int = 10000) -> str | None:
        """Places one `node_type` node on an empty canvas, selects it and opens the right side
        panel's Info tab, where the frontend fetches and renders the node's help page; returns
        the rendered text (None if nothing rendered in time)."""
        return self._async(
            "const pinia = document.getElementById('vue-app').__vue_app__.config.globalProperties.$pinia;"
            "window.app.graph.clear(); const node = window.LiteGraph.createNode(args[0]);"
            "window.app.graph.add(node); window.app.canvas.selectNode(node);"
            "pinia._s.get('rightSidePanel').openPanel('info');"
            "for (let t = 0; t < args[1]; t += 100) { await new Promise(r => setTimeout(r, 100));"
            "  const el = document.querySelector('.node-help-content');"
            "  if (el && el.innerText.trim().length > 0) return el.innerText; }"
            "return null;", node_type, timeout_ms)

    def new_node_widgets(self, node_type: str) -> list[list]:
        """[name, value] of each widget of a `node_type` node just placed on an empty canvas, as a user
        adding it from the node library gets it (a seed's control_after_generate widget included)."""
        return self._async(
            "window.app.graph.clear(); const node = window.LiteGraph.createNode(args[0]); window.app.graph.add(node);"
            "return (node.widgets || []).map(w => [w.name, w.value]);", node_type)

    def graph_to_prompt(self) -> dict:
        """The API prompt the frontend would queue for the graph now loaded."""
        return self._async("const p = await window.app.graphToPrompt(); return JSON.parse(JSON.stringify(p.output));")

    def close(self):
        self.driver.quit()
        shutil.rmtree(self.profile, ignore_errors=True)
