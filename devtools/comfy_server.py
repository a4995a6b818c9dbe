"""A real ComfyUI server on a free loopback port: start, talk HTTP and websocket, stop by pid.

Used by the demo (devtools/demo.py) and by the server and browser test tiers. The server runs
with `--cpu` (unless given `cpu=False`: then on the GPU ComfyUI finds, for benchmarks), a scratch `--base-directory` (models, custom_nodes with the pack linked in, input,
output) and an in-memory database, so it never writes into the ComfyUI tree.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import websocket  # websocket-client

from . import paths

IMPORT_FAILURE_MARKERS = ("IMPORT FAILED", "Cannot import", "Error while calling comfy_entrypoint")


class ServerError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PromptRun:
    prompt_id: str
    history: dict
    messages: list[dict] = field(default_factory=list)

    @property
    def status(self) -> str:
        return self.history.get("status", {}).get("status_str", "")

    def error_message(self) -> str:
        for m in self.messages:
            if m.get("type") == "execution_error":
                d = m["data"]
                return f"{d.get('node_type')} (node {d.get('node_id')}): {d.get('exception_type')}: {d.get('exception_message')}"
        return ""


class ComfyServer:
    def __init__(self, base_dir: Path | None = None, extra_args: tuple[str, ...] = (), python: str | None = None,
                 env: dict[str, str] | None = None, cpu: bool = True):
        self.cpu = cpu
        self.base_dir = Path(base_dir or paths.base_dir())
        self.env = dict(env or {})
        self.extra_args = tuple(extra_args)
        self.python = python or sys.executable
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.base_dir / f"comfyui-{self.port}.log"
        self.process: subprocess.Popen | None = None

    # --- lifecycle --------------------------------------------------------------------------
    def command(self) -> list[str]:
        return [self.python, "main.py", *(["--cpu"] if self.cpu else []), "--listen", "127.0.0.1", "--port", str(self.port),
                "--base-directory", str(self.base_dir), "--database-url", "sqlite:///:memory:",
                "--disable-api-nodes", *self.extra_args]

    def start(self, timeout: float = 180.0) -> "ComfyServer":
        self.log_file = open(self.log_path, "w")
        self.process = subprocess.Popen(self.command(), cwd=paths.comfyui_dir(), stdout=self.log_file,
                                        stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerError(f"ComfyUI exited with code {self.process.returncode} during start-up:\n{self.log_tail()}")
            try:
                self.get_json("/system_stats", timeout=2)
                return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.25)
        self.stop()
        raise ServerError(f"ComfyUI did not answer on {self.url} within {timeout:.0f}s:\n{self.log_tail()}")

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if getattr(self, "log_file", None):
            self.log_file.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def import_failures(self) -> list[str]:
        return [line for line in self.log_text().splitlines() if any(m in line for m in IMPORT_FAILURE_MARKERS)]

    # --- HTTP -------------------------------------------------------------------------------
    def get_json(self, route: str, timeout: float = 30):
        with urllib.request.urlopen(self.url + route, timeout=timeout) as r:
            return json.loads(r.read())

    def get_bytes(self, route: str, timeout: float = 30) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.url + route, timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def post_json(self, route: str, body: dict, timeout: float = 30) -> tuple[int, dict]:
        request = urllib.request.Request(self.url + route, data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as r:
                return r.status, json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    # --- prompts ----------------------------------------------------------------------------
    def queue_prompt(self, prompt: dict, client_id: str | None = None) -> dict:
        status, answer = self.post_json("/prompt", {"prompt": prompt, "client_id": client_id or uuid.uuid4().hex})
        if status != 200:
            raise ServerError(f"POST /prompt rejected ({status}): {json.dumps(answer, indent=1)[:3000]}")
        return answer

    def run_prompt(self, prompt: dict, timeout: float = 600.0, on_message=None) -> PromptRun:
        """Queues `prompt`, follows the websocket until it finishes, returns its history entry;
        `on_message(message)` sees each JSON message as it arrives."""
        client_id = uuid.uuid4().hex
        ws = websocket.create_connection(f"ws://127.0.0.1:{self.port}/ws?clientId={client_id}", timeout=timeout)
        messages, executing = [], None
        try:
            prompt_id = self.queue_prompt(prompt, client_id)["prompt_id"]
            deadline = time.monotonic() + timeout
            while True:
                ws.settimeout(max(1.0, deadline - time.monotonic()))
                frame = ws.recv()
                if isinstance(frame, bytes):   # a binary preview, sent while `executing` names its node
                    messages.append({"type": "binary_preview", "data": {"node": executing, "bytes": len(frame)}})
                    continue
                message = json.loads(frame)
                if message["type"] == "executing":
                    executing = message.get("data", {}).get("node")
                messages.append(message)
                if on_message is not None:
                    on_message(message)
                data = message.get("data", {})
                # "executing" with node None comes after the server has stored the history entry
                # (execution_success/error come before it: reading history then races)
                if message["type"] == "executing" and data.get("node") is None and data.get("prompt_id") == prompt_id:
                    break
                if time.monotonic() > deadline:
                    raise ServerError(f"prompt {prompt_id} did not finish within {timeout:.0f}s")
        finally:
            ws.close()
        history = self.get_json(f"/history/{prompt_id}").get(prompt_id, {})
        return PromptRun(prompt_id, history, messages)

    def output_files(self, run: PromptRun) -> list[Path]:
        """Local paths of every file the prompt's output nodes reported."""
        files = []
        for node_output in run.history.get("outputs", {}).values():
            for items in node_output.values():
                if not isinstance(items, list):
                    continue
                for item in items:
                    if isinstance(item, dict) and "filename" in item and item.get("type") == "output":
                        files.append(self.base_dir / "output" / item.get("subfolder", "") / item["filename"])
        return files
