"""Memory of a process as the kernel counts it (/proc/<pid>/status; torch's allocations are
invisible to tracemalloc): resident now, the high-water mark, and resetting that mark. Shared by
the hostile-input tests and the benchmarks."""

from __future__ import annotations


def status_bytes(pid: int | str, field: str) -> int:
    """A memory field of /proc/<pid>/status (VmRSS, VmHWM, ...) in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/{pid}/status has no {field}")


def rss_bytes(pid: int | str = "self") -> int:
    """Resident memory of process `pid` now."""
    return status_bytes(pid, "VmRSS")


def reset_peak_rss(pid: int | str = "self"):
    """Starts a new peak: the kernel's high-water mark VmHWM falls back to the current RSS."""
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")


def peak_rss_bytes(pid: int | str = "self") -> int:
    """The highest resident memory of `pid` since its start or the last reset_peak_rss."""
    return status_bytes(pid, "VmHWM")
