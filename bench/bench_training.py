"""Training cost: temporal-only training versus fine-tuning the whole UNet, and DDP scaling.

1. One training step at the same batch (B clips x T frames at an H x W latent), each method in a
   fresh process so peaks do not mix:
   - temporal:       frozen UNet + a fresh Video LDM adapter, Trainer + DiffusionPhase (mode temporal);
   - temporal+ckpt:  the same with the pack's gradient checkpointing;
   - full:           the whole UNet trainable as well, plus the same adapter (an identical forward),
                     one AdamW over all of it;
   - full+ckpt:      the same with gradient checkpointing (the like-for-like peer of temporal+ckpt).
   Step time: median over --steps steps after --warmup steps. Memory: the peak above the loaded
   model over warm-up and steps, i.e. optimiser state + gradients + activations (CPU: resident
   memory high-water mark, reset before training; CUDA: torch.cuda.max_memory_allocated); the
   process's absolute peak is shown too. Targets (issue): temporal <= 0.7 x full in time and memory.

2. DDP throughput of the real CLI (train.py) on CPU, 1 -> 2 processes at the same per-rank batch,
   on a synthetic moving-shapes folder and the demo bundle (devtools/make_demo_bundle.py): clips/s
   from the per-step `seconds` column of loss.csv (rank 0, the first --warmup steps skipped).
   Configurations, for N = --threads: 1 process x N threads (the whole machine to one process),
   1 process x N/2 threads, 2 processes x N/2 threads (torchrun, gloo). The honest comparison on a
   fixed machine is 2 x N/2 against 1 x N; 2 x N/2 against 1 x N/2 is per-process scaling with
   twice the cores. (N = 1: 1 x 1 against 2 x 1.)

Threads: N = --threads, else $OMP_NUM_THREADS, else all cores; every process gets OMP_NUM_THREADS
set explicitly (part 1: N). On a machine shared with other work, keep N at the idle cores: OpenMP
threads that find their core taken can make a step 50-100x slower (seen here: 35 s instead of
0.4 s for the tiny model with 2 threads on 2 cores while another process used one).

Model: by default the pack's tiny SD1.x architecture (devtools.tiny_bundles.tiny_sd1_spec: SD1.5's
block structure at widths 32/64/64/64) with random weights; --unet sd15 uses the full SD1.5 shape
(devtools/unet_configs.SD15, ~860M parameters: for a machine with time or a GPU). --precision
bf16/fp16: the forward computes in it as the trainer's (UNetDenoiser's precision) and the frozen UNet
is held in it as train.py loads it; the "full" methods keep fp32 weights (they train them). Each
run prints what the UNet computed in. The DDP part always uses the tiny
demo bundle unless --ddp-checkpoint names another checkpoint.

Usage: .venv/bin/python -m bench.bench_training [--steps 10] [--batch 2] [--frames 8] [--latent 16 [W]]
           [--unet tiny|sd15] [--methods temporal temporal+ckpt full full+ckpt] [--skip-ddp]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .common import peak_gib, print_table, reset_peak
from devtools import tiny_bundles

REPO_ROOT = Path(__file__).resolve().parent.parent
METHODS = ("temporal", "temporal+ckpt", "full", "full+ckpt")
TARGET = 0.7


# --- 1. temporal-only versus full fine-tune, one method per process ---------------------------------


def build_base(pack_name: str, unet: str, device, dtype=None):
    """(MODEL, text conditioning) for a random-weight SD1.x UNet with weights in `dtype` (fp32 by
    default): the pack's tiny bundle architecture or the full SD1.5 shape, through the same model
    config as a bundle."""
    import importlib

    import torch

    import comfy.model_management as mm
    import comfy.model_patcher

    bundle_host = importlib.import_module(f"{pack_name}.host.bundle")
    spec = tiny_bundles.sd1_bench_spec(unet)   # the text encoder is never built here
    model_config = bundle_host.bundle_model_config(spec)
    model_config.set_inference_dtype(dtype or torch.float32, None)
    model = model_config.get_model({}, device="cpu")
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        tiny_bundles.random_init_(model.diffusion_model, generator)
    patcher = comfy.model_patcher.CoreModelPatcher(model, load_device=device, offload_device=mm.unet_offload_device())
    text = torch.randn(1, 77, spec.unet_config["context_dim"], generator=generator)
    return patcher, text


def child(args) -> dict:
    import importlib

    import torch

    from devtools.comfy_in_process import init_comfy

    # the pack under its installed name, as devtools.tiny_bundles imports it (one copy of its modules)
    pack = init_comfy(cpu=args.device == "cpu").__name__
    import comfy.model_management as mm

    host = importlib.import_module(f"{pack}.host.training_model")
    patch = importlib.import_module(f"{pack}.host.temporal_adapter")
    objective = importlib.import_module(f"{pack}.videoldm_core.training.diffusion_objective")
    trainer_module = importlib.import_module(f"{pack}.videoldm_core.training.trainer")
    batches = importlib.import_module(f"{pack}.videoldm_core.training.batches")

    class FullPhase(objective.DiffusionPhase):
        """The diffusion objective with the UNet registered next to the adapter: both trained."""

        def __init__(self, unet, *rest, **kwargs):
            super().__init__(*rest, **kwargs)
            self.unet = unet

    class OnBatchDevice:
        """The denoiser's prediction on the batch's device: the objective builds its target there
        (CPU latents), so on CUDA the prediction comes back to it (a few MB per step)."""

        def __init__(self, denoiser):
            self.denoiser = denoiser

        def __call__(self, x_t, *rest):
            return self.denoiser(x_t, *rest).to(x_t.device)

    method, device = args.child, mm.get_torch_device()
    full, checkpointing = method.startswith("full"), method.endswith("+ckpt")
    # the frozen UNet in the run's precision, as train.py loads it (fp32 where the UNet itself trains)
    precisions = importlib.import_module(f"{pack}.host.training_model").PRECISIONS
    frozen_dtype = torch.float32 if full else (precisions[args.precision] or torch.float32)
    model, text = build_base(pack, args.unet, device, frozen_dtype)
    base = host.trainable_base(model)                  # frozen (a copy if it held inference tensors)
    unet = base.model.diffusion_model
    if full:
        unet.requires_grad_(True)
    torch.manual_seed(0)
    spec, adapter = patch.fresh_adapter_for_model(base)
    with torch.no_grad():                              # off the zero-output start, as mid-training
        for p in adapter.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    denoiser = host.UNetDenoiser(base, adapter, text, gradient_checkpointing=checkpointing,
                                 precision=args.precision).load()
    schedule = host.noise_schedule(base)
    if full:
        phase = FullPhase(unet, adapter, OnBatchDevice(denoiser), schedule, "temporal")
    else:
        phase = objective.DiffusionPhase(adapter, OnBatchDevice(denoiser), schedule, "temporal")
    generator = torch.Generator().manual_seed(0)
    data = [{"latents": torch.randn(args.frames, 4, *args.latent, generator=generator)}
            for _ in range(2 * args.batch)]
    config = trainer_module.TrainConfig(steps=args.warmup + args.steps, lr=1e-4, precision=args.precision, seed=0)

    cuda = device.type == "cuda"
    before = reset_peak(cuda)
    trainer = trainer_module.Trainer([phase], config, batches.StepBatches(data, args.batch, seed=0), device=device)
    times = []
    for step in range(args.warmup + args.steps):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        row = trainer.train_step()
        if cuda:
            torch.cuda.synchronize()
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
    peak_process = peak_gib(cuda)   # since the reset, the loaded model included
    peak = peak_process - before
    return {"method": method, "seconds": statistics.median(times), "all_seconds": times, "peak_gib": peak,
            "process_peak_gib": peak_process, "loss": row["adapter/loss"], "threads": torch.get_num_threads(),
            "device": str(device), "computes_in": str(denoiser.dtype).removeprefix("torch."),
            "frozen_weights": str(frozen_dtype).removeprefix("torch."),
            "trainable": sum(p.numel() for p in phase.parameters() if p.requires_grad),
            "unet_params": sum(p.numel() for p in unet.parameters())}


def run_child(args, method: str, env: dict) -> dict | None:
    command = [sys.executable, "-m", "bench.bench_training", "--child", method, "--unet", args.unet, "--steps",
               str(args.steps), "--warmup", str(args.warmup), "--batch", str(args.batch), "--frames", str(args.frames),
               "--latent", *map(str, args.latent), "--precision", args.precision, "--device", args.device]
    proc = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"{method}: failed ({proc.returncode})\n{proc.stderr[-3000:]}", file=sys.stderr, flush=True)
        return None
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"{method}: {result['seconds']:.3f} s/step, +{result['peak_gib']:.3f} GiB "
          f"(steps {', '.join(f'{s:.2f}' for s in result['all_seconds'])})", flush=True)
    return result


def compare_methods(args, env: dict):
    results = {method: run_child(args, method, env) for method in args.methods}
    full = results.get("full")
    rows = []
    for method in args.methods:
        r = results[method]
        if r is None:
            rows.append((method, "failed", "", "", "", "", "", ""))
            continue
        time_ratio = r["seconds"] / full["seconds"] if full else None
        memory_ratio = r["peak_gib"] / full["peak_gib"] if full else None
        met = "-"
        if method.startswith("temporal") and full:
            missed = [what for what, ratio in (("time", time_ratio), ("memory", memory_ratio)) if ratio > TARGET]
            met = f"no ({', '.join(missed)})" if missed else "yes"
        rows.append((method, f"{r['trainable'] / 1e6:.2f}M", f"{r['seconds']:.3f}",
                     f"{time_ratio:.2f}x" if time_ratio is not None else "", f"{r['peak_gib']:.3f}",
                     f"{memory_ratio:.2f}x" if memory_ratio is not None else "", f"{r['process_peak_gib']:.2f}", met))
    any_result = next((r for r in results.values() if r), None)
    where = (f"{any_result['device']}, {any_result['threads']} threads, {any_result['unet_params'] / 1e6:.1f}M UNet parameters"
             if any_result else "")
    computed = sorted({f"{r['method']}: computes in {r['computes_in']}, frozen weights {r['frozen_weights']}"
                       for r in results.values() if r})
    print_table(f"Training step, {args.unet} SD1.x UNet, batch {args.batch} x {args.frames} frames at {args.latent[0]}x"
                f"{args.latent[1]} latent, {args.precision}, AdamW, median of {args.steps} steps after {args.warmup} "
                f"({where}); ratios vs full; target <= {TARGET}x in time and memory",
                rows, ("method", "trainable", "s/step", "time ratio", "train GiB", "memory ratio", "process GiB",
                       "targets met"))
    print("; ".join(computed))
    print("train GiB: peak above the loaded model (optimiser state + gradients + activations); "
          "process GiB: the process's absolute peak over the same steps.")
    a, b = results.get("temporal+ckpt"), results.get("full+ckpt")
    if a and b:
        print(f"like-for-like, both checkpointed: temporal+ckpt / full+ckpt: time {a['seconds'] / b['seconds']:.2f}x, "
              f"memory {a['peak_gib'] / b['peak_gib']:.2f}x")
    return results


# --- 2. DDP throughput through the CLI ----------------------------------------------------------------


def make_inputs(workdir: Path, args, env: dict) -> tuple[Path, Path]:
    """(checkpoint, clip folder): the demo bundle (unless --ddp-checkpoint) and moving-shapes clips."""
    if args.ddp_checkpoint:
        checkpoint = Path(args.ddp_checkpoint).resolve()
    else:
        base = workdir / "base"
        subprocess.run([sys.executable, "-m", "devtools.make_demo_bundle", str(base)], cwd=REPO_ROOT, env=env,
                       check=True, capture_output=True)
        checkpoint = base / "models" / "checkpoints" / "videoldm_demo_tiny.safetensors"
    from devtools.synthetic_data import write_dataset

    clips = workdir / "clips"
    write_dataset(clips, count=max(4, 4 * args.batch), seed=0, frames=args.frames, height=args.latent[0] * 8,
                  width=args.latent[1] * 8, fps=8.0)
    return checkpoint, clips


def run_cli(workdir: Path, name: str, processes: int, threads: int, checkpoint: Path, clips: Path, args,
            env: dict) -> dict | None:
    output = workdir / name
    config = {"checkpoint": str(checkpoint), "mode": "temporal", "output": str(output), "prompt": "",
              "data": {"folder": str(clips), "frames": args.frames, "fps": None, "width": args.latent[1] * 8,
                       "height": args.latent[0] * 8, "cache": str(workdir / "cache")},
              "train": {"steps": args.warmup + args.steps, "lr": 1e-4, "batch_size": args.batch, "seed": 0}}
    config_path = workdir / f"{name}.json"
    config_path.write_text(json.dumps(config, indent=1))
    entry = [str(REPO_ROOT / "train.py"), "--config", str(config_path), "--cpu"]
    if processes == 1:
        command = [sys.executable, *entry]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes), *entry]
    run_env = dict(env, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), CUDA_VISIBLE_DEVICES="")
    started = time.perf_counter()
    proc = subprocess.run(command, cwd=REPO_ROOT, env=run_env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    log = output / "loss.csv"
    if proc.returncode != 0 or not log.exists():
        print(f"{name}: failed ({proc.returncode})\n{proc.stderr[-3000:]}", file=sys.stderr, flush=True)
        return None
    with open(log, newline="") as f:
        seconds = [float(row["seconds"]) for row in csv.DictReader(f)]
    measured = seconds[args.warmup:] or seconds
    step = statistics.median(measured)
    result = {"processes": processes, "threads": threads, "seconds": step, "all_seconds": seconds,
              "clips_per_s": processes * args.batch / step, "wall": wall}
    print(f"{name}: {step:.3f} s/step, {result['clips_per_s']:.2f} clips/s, whole run {wall:.0f} s "
          f"(steps {', '.join(f'{s:.2f}' for s in seconds)})", flush=True)
    return result


def ddp_scaling(args, env: dict):
    total = args.threads
    half = max(1, total // 2)
    configurations = [("1x%d" % total, 1, total), ("1x%d" % half, 1, half), ("2x%d" % half, 2, half)]
    configurations = list(dict.fromkeys(configurations))  # N = 1: 1xN and 1xN/2 coincide
    with tempfile.TemporaryDirectory(prefix="bench_training_") as tmp:
        workdir = Path(tmp)
        checkpoint, clips = make_inputs(workdir, args, env)
        results = {name: run_cli(workdir, name, processes, threads, checkpoint, clips, args, env)
                   for name, processes, threads in configurations}
    single_full, single_half, double = results.get(f"1x{total}"), results.get(f"1x{half}"), results.get(f"2x{half}")
    references = [r for r in dict.fromkeys((f"1x{total}", f"1x{half}")) if results.get(r)]
    rows = []
    for name, processes, threads in configurations:
        r = results[name]
        if r is None:
            rows.append((name, processes, threads, processes * threads, "failed", "", *[""] * len(references)))
            continue
        rows.append((name, processes, threads, processes * threads, f"{r['seconds']:.3f}", f"{r['clips_per_s']:.2f}",
                     *[f"{r['clips_per_s'] / results[ref]['clips_per_s']:.2f}x" for ref in references]))
    print_table(f"DDP throughput of train.py on CPU (gloo), {checkpoint.name}, per-rank batch {args.batch} x "
                f"{args.frames} frames at {args.latent[0]}x{args.latent[1]} latent, median of {args.steps} steps after "
                f"{args.warmup} (rank 0's loss.csv); {os.cpu_count()} cores here; OMP_NUM_THREADS = threads per process",
                rows, ("config", "processes", "threads", "threads in all", "s/step", "clips/s",
                       *[f"vs {ref}" for ref in references]))
    if double and single_full:
        same = "the same" if 2 * half == total else f"{2 * half} vs {total}"
        print(f"scaling 1 -> 2 processes, 2x{half} vs 1x{total} ({same} threads in all): "
              f"{double['clips_per_s'] / single_full['clips_per_s']:.2f}x clips/s")
    if double and single_half and half != total:
        print(f"per-process scaling at {half} thread(s) each (2x{half} vs 1x{half}, twice the cores): "
              f"{double['clips_per_s'] / single_half['clips_per_s']:.2f}x clips/s")
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10, help="measured steps (after --warmup)")
    parser.add_argument("--warmup", type=int, default=2, help="steps run first and not measured")
    parser.add_argument("--batch", type=int, default=2, help="clips per step (per rank in the DDP part)")
    parser.add_argument("--frames", type=int, default=8, help="frames per clip")
    parser.add_argument("--latent", type=int, nargs="+", default=[16], metavar="H [W]",
                        help="latent height and width (pixels / 8); one number for a square")
    parser.add_argument("--unet", choices=("tiny", "sd15"), default="tiny")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="part 1's device (auto: CUDA when present); the DDP part is always CPU")
    parser.add_argument("--skip-ddp", action="store_true", help="only the temporal-vs-full comparison")
    parser.add_argument("--skip-methods", action="store_true", help="only the DDP scaling")
    parser.add_argument("--threads", type=int, default=0,
                        help="threads N: OMP_NUM_THREADS of each part-1 process, and the DDP part's total "
                             "(default: $OMP_NUM_THREADS, else all cores)")
    parser.add_argument("--ddp-checkpoint", help="DDP part: a checkpoint or bundle instead of the tiny demo bundle")
    parser.add_argument("--child", choices=METHODS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if len(args.latent) not in (1, 2):
        parser.error(f"--latent takes H or H W, got {len(args.latent)} numbers")
    args.latent = (args.latent * 2)[:2]
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))  # devtools, videoldm_core, train.py
    if args.device == "auto":
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.child:
        print(json.dumps(child(args)))
        return
    env = dict(os.environ)
    if not env.get("COMFYUI_DIR"):
        from devtools import paths

        env["COMFYUI_DIR"] = str(paths.comfyui_dir())
    args.threads = args.threads or int(env.get("OMP_NUM_THREADS") or 0) or os.cpu_count() or 1
    env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    print(f"{os.cpu_count()} cores; OMP_NUM_THREADS={args.threads} in each part-1 process; part 2 from "
          f"{args.threads} thread(s) in total (OMP_NUM_THREADS = threads per process)", flush=True)
    if not args.skip_methods:
        compare_methods(args, env)
    if not args.skip_ddp:
        ddp_scaling(args, env)

if __name__ == "__main__":
    main()
