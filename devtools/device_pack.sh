#!/usr/bin/env bash
# Packs what a lent GPU machine needs for devtools/device_figures.sh into .device/ (git-ignored),
# here, where PyPI is reachable. The device image has Python 3.12 with torch 2.11, numpy,
# transformers, aiohttp, ... but not the rest of ComfyUI 0.30.0's requirements, and it reaches no
# registry. Everything travels with the working tree, 64 MiB a call, and the repository is already
# ~28 MiB of that, so it goes in two calls on one warm machine:
#   .device/av/    PyAV's wheel alone (35 MB: FFmpeg's libraries)
#   .device/rest/  the other missing wheels, comfy-kitchen without its compiled CUDA/HIP kernels
#                  (135 MB; ComfyUI imports the package, the pack never uses its quantised ops, and
#                  it falls back to its eager backend), and ComfyUI 0.30.0's code as a tarball
# Versions are the ones devtools/setup.sh installed here, so both machines run the same stack.
# Then, on the device: `devtools/device_figures.sh install-av` (carry .device/av) and at once
# `devtools/device_figures.sh run` (carry .device/rest); docs/development.md "GPU figures".
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/devtools/setup.sh"
set -a; . "${VIDEOLDM_CACHE:-$ROOT/.cache}/setup.env"; set +a
VPY="$VIDEOLDM_VENV/bin/python"
OUT="$ROOT/.device"
LIMIT_MIB=62   # of the 64 MiB a call may carry, with the tracked tree

say() { printf '[device-pack] %s\n' "$*" >&2; }
die() { printf '[device-pack] ERROR: %s\n' "$*" >&2; exit 1; }

# What ComfyUI 0.30.0, the pack's requirements, its training extra and the benchmarks' server
# client need beyond the packages of the device image (as its documentation listed them, 2026-11).
MISSING=(torchsde trampoline alembic Mako SQLAlchemy simpleeval blake3 kornia kornia_rs spandrel
         pydantic pydantic-core annotated-types typing-inspection pydantic-settings python-dotenv
         typing-extensions websocket-client webdataset braceexpand comfy-aimdo)

pinned() {  # the version installed here
    "$VPY" -c "import sys; from importlib.metadata import version; print(f'{sys.argv[1]}=={version(sys.argv[1])}')" "$1" \
        || die "$1 is not installed in $VIDEOLDM_VENV; devtools/setup.sh should have installed it"
}
download() {  # dest, requirement: a CPython 3.12 x86-64 wheel
    local platforms=() n
    for n in 5 12 17 24 27 28 31 34 35; do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
    "$VPY" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp "${platforms[@]}" --platform manylinux2014_x86_64 --platform manylinux2010_x86_64 \
        --platform manylinux1_x86_64 --platform any -d "$1" "$2" 2> >(grep -v "^WARNING: Location" >&2) \
        || die "no CPython 3.12 x86-64 wheel of $2 on PyPI"
}

rm -rf "$OUT/av" "$OUT/rest"
mkdir -p "$OUT/av" "$OUT/rest/wheels" "$OUT/rest/kitchen"
say "downloading PyAV"
req=$(pinned av); download "$OUT/av" "$req"
say "downloading ${#MISSING[@]} more wheels"
for name in "${MISSING[@]}"; do req=$(pinned "$name"); download "$OUT/rest/wheels" "$req"; done
say "comfy-kitchen without its compiled kernels"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
req=$(pinned comfy-kitchen); download "$tmp" "$req"
"$VPY" - "$tmp"/comfy_kitchen-*.whl "$OUT/rest/kitchen" <<'EOF'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as wheel:
    kept = [n for n in wheel.namelist() if not n.endswith((".so", ".pyd"))]
    wheel.extractall(sys.argv[2], members=kept)
EOF
rm -rf "$tmp"
say "ComfyUI's code (no tests, blueprints or API nodes)"
tar -czf "$OUT/rest/comfyui.tar.gz" -C "$COMFYUI_DIR" --exclude=tests --exclude=tests-unit --exclude=blueprints \
    --exclude=comfy_api_nodes --exclude=__pycache__ --exclude='*.pyc' .

tree_mib=$(cd "$ROOT" && git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
for part in av rest; do
    bytes=$(du -sb "$OUT/$part" | cut -f1)
    total=$(( (tree_mib + bytes) / 1048576 ))
    say "call with .device/$part: $(( bytes / 1048576 )) MiB + the tracked tree $(( tree_mib / 1048576 )) MiB = $total MiB"
    [ "$total" -le "$LIMIT_MIB" ] || die "the call carrying .device/$part would send $total MiB (the limit is 64)"
done
say "ready: devtools/device_figures.sh install-av (carry .device/av), then run (carry .device/rest)"
