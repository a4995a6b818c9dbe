"""devtools.process_memory.PeakRSS, which the cascade benchmark reads a server's peak with: the
kernel's high-water mark, or resident memory polled where a sandboxed kernel keeps no mark."""

import mmap
import os
import time

import pytest

from devtools.process_memory import PeakRSS, rss_bytes, statm_rss_bytes


@pytest.mark.parametrize("polled", [False, True])
def test_the_peak_of_a_block_sees_memory_it_held_and_freed(polled):
    held = 256 * 2**20
    meter = PeakRSS(os.getpid())
    if polled:   # as on gVisor
        meter.method = "VmRSS polled every 5 ms"
    before = rss_bytes()
    with meter:
        # an anonymous mapping of our own, each page touched: resident, and unmapped on close whatever
        # malloc's settings (a freed tensor may stay in the heap: allocator.env sets a 4 GiB trim threshold)
        block = mmap.mmap(-1, held)
        for page in range(0, held, mmap.PAGESIZE):
            block[page] = 1
        time.sleep(0.1)
        block.close()
    assert meter.bytes - before > 0.9 * held
    assert rss_bytes() - before < 0.5 * held       # freed: only the peak remembers it
    assert abs(statm_rss_bytes() - rss_bytes()) < 16 * 2**20
