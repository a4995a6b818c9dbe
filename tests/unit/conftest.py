"""Unit-tier fixtures."""

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Small ops gain nothing from threads, and a busy 2-core machine stalls torch's pool (3 s -> 50 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
