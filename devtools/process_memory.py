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


def return_freed_heap():
    """Hands this process's freed heap back to the OS (glibc's malloc_trim: freed blocks otherwise
    stay mapped and resident); nothing where the C library is not glibc."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def reset_peak_rss(pid: int | str = "self"):
    """Starts a new peak: the kernel's high-water mark VmHWM falls back to the current RSS."""
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")


def peak_rss_bytes(pid: int | str = "self") -> int:
    """The highest resident memory of `pid` since its start or the last reset_peak_rss."""
    return status_bytes(pid, "VmHWM")


def kernel_keeps_peaks(pid: int | str = "self") -> bool:
    """Whether the kernel keeps a resettable high-water mark (VmHWM and clear_refs); a sandboxed one
    (gVisor) may keep neither."""
    import os

    try:
        return os.path.exists(f"/proc/{pid}/clear_refs") and status_bytes(pid, "VmHWM") > 0
    except (OSError, RuntimeError):
        return False


def statm_rss_bytes(pid: int | str = "self") -> int:
    """Resident memory from /proc/<pid>/statm (pages), which sandboxed kernels keep too."""
    import os

    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """`with PeakRSS(pid) as peak: ...` then `peak.bytes`: the highest resident memory of `pid` while
    the block ran. The kernel's high-water mark where it keeps one (reset at the start); otherwise
    resident memory polled every `interval` seconds from a thread, which can miss a peak shorter
    than that (`method` says which)."""

    def __init__(self, pid: int | str, interval: float = 0.005):
        self.pid, self.interval, self.bytes = pid, interval, 0
        self.method = "VmHWM" if kernel_keeps_peaks(pid) else f"VmRSS polled every {interval * 1000:g} ms"

    def __enter__(self) -> "PeakRSS":
        import threading

        if self.method == "VmHWM":
            reset_peak_rss(self.pid)
            return self
        self._stop = threading.Event()
        self.bytes = statm_rss_bytes(self.pid)

        def poll():
            while not self._stop.wait(self.interval):
                self.bytes = max(self.bytes, statm_rss_bytes(self.pid))

        self._thread = threading.Thread(target=poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.method == "VmHWM":
            self.bytes = peak_rss_bytes(self.pid)
        else:
            self._stop.set()
            self._thread.join()
            self.bytes = max(self.bytes, statm_rss_bytes(self.pid))
        return False
