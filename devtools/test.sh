#!/usr/bin/env bash
# Command 2: set everything up (idempotent) and run every test tier against a real ComfyUI.
# Extra arguments go to pytest, e.g. `devtools/test.sh -m unit` or `devtools/test.sh -k bundle`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/devtools/setup.sh"
set -a; . "${VIDEOLDM_CACHE:-$ROOT/.cache}/setup.env"; . "$ROOT/devtools/allocator.env"; set +a
cd "$ROOT"
exec "$VIDEOLDM_VENV/bin/python" -m pytest tests "$@"
