"""Fixtures for the net tests."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """These tensors are small: on a 2-core machine shared with other work, OpenMP threads only add waiting
    (a barrier per op, and the chunked step runs many ops)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
