"""Shared helpers for benchmarks: medians of repeated runs and peak memory, printed side by side."""

from __future__ import annotations

import resource
import statistics
import time


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


def peak_rss_gib() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _status_gib(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 2**20
    raise RuntimeError(f"{field} not in /proc/self/status")


def step_peak_gib(fn) -> float:
    """Extra resident memory at the peak of `fn()` (activations), on Linux: freed heap is handed
    back first (malloc_trim) and the kernel's high-water mark reset (clear_refs 5)."""
    import ctypes
    import gc

    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _status_gib("VmRSS")
    fn()
    return _status_gib("VmHWM") - before


def print_table(title: str, rows: list[tuple[str, ...]], header: tuple[str, ...]):
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    print(f"\n{title}")
    for row in [header, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)))
