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


def print_table(title: str, rows: list[tuple[str, ...]], header: tuple[str, ...]):
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    print(f"\n{title}")
    for row in [header, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)))
