#!/usr/bin/env bash
# Command 1: set everything up (idempotent), start a real ComfyUI server on loopback with the
# pack, run the demo workflow (workflows/api/cascade.json) through POST /prompt and print the mp4.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VIDEOLDM_SKIP_BROWSER=1 "$ROOT/devtools/setup.sh"
set -a; . "${VIDEOLDM_CACHE:-$ROOT/.cache}/setup.env"; . "$ROOT/devtools/allocator.env"; set +a
cd "$ROOT"
exec "$VIDEOLDM_VENV/bin/python" -m devtools.demo "$@"
