"""Shared by every test file: one torch thread per test (tiny tensors; extra threads only add
overhead, and contention when the cores are busy)."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
