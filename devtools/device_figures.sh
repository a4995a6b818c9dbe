#!/usr/bin/env bash
# The GPU figures the issues ask for, as one prepared run on a lent device machine (an H200 with
# Python 3.12 and torch, no registry): docs/development.md "GPU figures". Prepare here with
# devtools/device_pack.sh, then make two calls on one warm machine (it is handed back 30 s after a
# call, so make the second at once):
#   1. devtools/device_figures.sh install-av    carry [".device/av"]     PyAV into .device/site
#   2. devtools/device_figures.sh run           carry [".device/rest"]   the rest, then the benchmarks
# `run` installs the rest into .device/site, unpacks ComfyUI 0.30.0 into .device/ComfyUI, makes a
# scratch base directory with the pack linked in, and runs, most wanted first, each bounded so that
# the whole stays inside one call's 10 minutes (logs in $OUT, else .device/out):
#   1. SD1.5, 16 frames at 320x512, cfg 7.5: seconds per sampling step and peak VRAM, plain / Video LDM
#      adapter / AnimateDiff v2 module (bench.bench_sampling_step);
#   2. a training step at the paper's shape (3 clips x 16 frames at 320x512 per GPU, bf16), temporal
#      layers with and without gradient checkpointing beside the whole UNet, and the memory plan's
#      estimate for the same setting (bench.bench_training, bench.memory_plan);
#   3. issue 22: host memory per output frame of Video Upscale -> decode -> mp4 with the server on
#      the GPU (bench.bench_streamed_cascade --device cuda), then the whole cascade template if time is left.
# With a ready environment (VIDEOLDM_DEVICE_SMOKE=1, e.g. here after devtools/setup.sh) `run` skips the
# installs and runs every step at toy size on the CPU: a check of this script, not a figure.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DEV="$ROOT/.device"
SITE="$DEV/site"
LOGS="${OUT:-$DEV/out}"
BUDGET="${VIDEOLDM_DEVICE_BUDGET_S:-500}"   # seconds from the start, installs included, inside the call's 600
SMOKE="${VIDEOLDM_DEVICE_SMOKE:-0}"
PY="${PYTHON:-python3}"
mkdir -p "$LOGS"

say() { printf '[device] %s\n' "$*" | tee -a "$LOGS/device.log" >&2; }
die() { say "ERROR: $*"; exit 1; }
pip_target() { "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$@"; }

case "${1:-}" in
install-av)
    ls "$DEV"/av/av-*.whl >/dev/null 2>&1 || die "no .device/av/av-*.whl: run devtools/device_pack.sh here and carry .device/av"
    pip_target "$DEV"/av/*.whl
    say "PyAV in $SITE; now, on this warm machine: devtools/device_figures.sh run (carry .device/rest)"
    exit 0 ;;
run) ;;
*) die "usage: devtools/device_figures.sh install-av|run" ;;
esac

if [ "$SMOKE" = "1" ]; then
    set -a; . "${VIDEOLDM_CACHE:-$ROOT/.cache}/setup.env"; set +a
    PY="$VIDEOLDM_VENV/bin/python"
else
    [ -d "$SITE/av" ] || die "PyAV is not in $SITE: this is a fresh machine; call install-av first (carry .device/av), then run at once"
    [ -f "$DEV/rest/comfyui.tar.gz" ] || die "no .device/rest: run devtools/device_pack.sh here and carry .device/rest"
    pip_target "$DEV"/rest/wheels/*.whl
    cp -r "$DEV"/rest/kitchen/. "$SITE"/
    rm -rf "$DEV/ComfyUI" && mkdir -p "$DEV/ComfyUI" && tar -xzf "$DEV/rest/comfyui.tar.gz" -C "$DEV/ComfyUI"
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}" COMFYUI_DIR="$DEV/ComfyUI" VIDEOLDM_SCRATCH="$DEV/scratch" \
           VIDEOLDM_PACK_LINK=comfyui_videoldm VIDEOLDM_VENV="$DEV/none"
    mkdir -p "$VIDEOLDM_SCRATCH/base/custom_nodes" "$VIDEOLDM_SCRATCH/base/models/checkpoints" \
             "$VIDEOLDM_SCRATCH/base/input" "$VIDEOLDM_SCRATCH/base/output"
    ln -sfn "$ROOT" "$VIDEOLDM_SCRATCH/base/custom_nodes/$VIDEOLDM_PACK_LINK"
fi
export PYTHONUNBUFFERED=1
"$PY" -c "import av, websocket, torchsde, alembic, sqlalchemy, pydantic_settings, kornia, spandrel, blake3, simpleeval, \
comfy_aimdo, comfy_kitchen, webdataset" 2>&1 | tee -a "$LOGS/device.log" \
    || die "a package is missing (above): run devtools/device_pack.sh again here and carry .device/rest"
# The cascade benchmark reads a server's peak resident memory from the kernel's high-water mark
# (VmHWM, reset through clear_refs), or polls resident memory where a sandboxed kernel (gVisor) keeps
# no mark (devtools/process_memory.PeakRSS); each run's log says which.
[ -e /proc/self/clear_refs ] && grep -q '^VmHWM' /proc/self/status || say "no VmHWM/clear_refs on $(uname -r): peak RSS is polled"
mkdir -p "$DEV/frontend"   # the benchmarks' servers are talked to through the API only: no frontend is carried
SERVER_ARGS=("--server-args=--front-end-root $DEV/frontend")

deadline=$BUDGET   # $SECONDS counts from the script's start
step() {  # name, min seconds it needs, command...: run it if the budget allows, bounded by what is left
    local name="$1" need="$2"; shift 2
    local left=$((deadline - SECONDS))
    if [ "$left" -lt "$need" ]; then say "skipped $name: ${left}s left, it needs ${need}s"; return 0; fi
    say "$name (at most ${left}s): $*"
    local start=$SECONDS rc=0
    timeout --kill-after=5 "$left" "$@" > "$LOGS/$name.log" 2>&1 || rc=$?
    say "$name: rc=$rc after $((SECONDS - start))s"
    tail -n 25 "$LOGS/$name.log" >&2
}

if [ "$SMOKE" = "1" ]; then
    SAMPLING=(--device cpu --size tiny --frames 4 --latent 8 12 --steps 3)
    TRAINING=(--unet tiny --device cpu --precision fp32 --frames 4 --latent 8 12 --batch 1 --steps 2 --warmup 1)
    PLAN=(--frames 4 --height 64 --width 96 --gpus 8)
    CASCADE=(--device cpu --frames 8 16 --side 32 --window 4)
    TEMPLATE=(--device cpu --segments 2 3 --paths streamed)   # minutes on a CPU: cut by the budget
else
    "$PY" -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))" 2>&1 | tee -a "$LOGS/device.log"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >> "$LOGS/device.log" 2>&1 || true
    SAMPLING=(--device cuda)
    TRAINING=(--unet sd15 --device cuda --precision bf16 --frames 16 --latent 40 64 --batch 3 --steps 4 --warmup 2)
    PLAN=(--frames 16 --height 320 --width 512 --gpus 8)
    CASCADE=(--device cuda)
    TEMPLATE=(--device cuda)
fi

step sampling_step 90 "$PY" -m bench.bench_sampling_step "${SAMPLING[@]}"
step training_step 120 "$PY" -m bench.bench_training "${TRAINING[@]}" --methods temporal+ckpt temporal full+ckpt --skip-ddp
step memory_plan 10 "$PY" -m bench.memory_plan "${PLAN[@]}"
step cascade_last_stages 120 "$PY" -m bench.bench_streamed_cascade "${CASCADE[@]}" "${SERVER_ARGS[@]}"
step cascade_template 150 "$PY" -m bench.bench_streamed_cascade --graph cascade "${TEMPLATE[@]}" "${SERVER_ARGS[@]}"
say "done; logs in $LOGS"
