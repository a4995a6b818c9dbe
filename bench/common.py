"""Shared helpers for benchmarks: medians of repeated runs and peak memory, printed side by side."""

from __future__ import annotations

import statistics
import time

from devtools.process_memory import reset_peak_rss, return_freed_heap, status_bytes


# glibc raises its mmap threshold to the largest block freed so far, so after the first window or
# tile the activations come from the heap, which it does not hand back: a loop over windows then
# reads as growth that is the allocator's, not tensors the code holds (Temporal VAE Decode, 16 ->
# 128 frames of an 8x8 latent: 0.43 -> 0.57 GiB by default, 0.23 -> 0.26 GiB with this). Benchmarks
# that loop over regions measure peaks in child processes with a fixed threshold, the same for every
# path they compare.
PEAK_ENV = {"MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}


def default_allocator_env() -> dict[str, str]:
    """This environment without glibc's MALLOC_* settings (devtools/allocator.env sets some): what a
    "default allocator" run must start children with."""
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}


def pack_allocator_env() -> dict[str, str]:
    """This environment with devtools/allocator.env's settings, whether or not the shell sourced it:
    what the documented figures of benchmarks that run each length in a child were measured with."""
    import os
    from pathlib import Path

    settings = Path(__file__).resolve().parent.parent / "devtools" / "allocator.env"
    pairs = (line.split("=", 1) for line in settings.read_text().splitlines() if line and not line.startswith("#"))
    return {**os.environ, **{name.strip(): value.strip() for name, value in pairs}}


def interleaved_medians(fns: dict, repeats: int = 5) -> dict[str, float]:
    """Median seconds of each callable, run in turn (a, b, a, b, ...) after one warm-up each, so
    caches and machine load affect every contender alike."""
    times = {name: [] for name in fns}
    for name, fn in fns.items():
        fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def status_gib(field: str) -> float:
    return status_bytes("self", field) / 2**30


def reset_peak(cuda: bool = False) -> float:
    """Starts a peak measurement and returns the GiB in use now. CUDA: the allocator's peak is reset
    (allocated memory). CPU, on Linux: freed heap is handed back first (malloc_trim) and the
    kernel's high-water mark reset (clear_refs 5) (resident memory)."""
    import gc

    if cuda:
        import torch

        gc.collect()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated() / 2**30
    return_freed_heap()
    reset_peak_rss()
    return status_gib("VmRSS")


def peak_gib(cuda: bool = False) -> float:
    """The peak since `reset_peak`, everything included (weights too)."""
    if cuda:
        import torch

        return torch.cuda.max_memory_allocated() / 2**30
    return status_gib("VmHWM")


def step_peak_gib(fn) -> float:
    """Extra resident memory at the peak of `fn()` (activations)."""
    before = reset_peak()
    fn()
    return peak_gib() - before


def print_table(title: str, rows: list[tuple[str, ...]], header: tuple[str, ...]):
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    print(f"\n{title}")
    for row in [header, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)))
