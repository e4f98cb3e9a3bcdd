"""Test set-up: the ``e2e`` marker, and one intra-op thread for these tiny tensors (more threads
only add contention on a loaded 2-core machine)."""

import pytest
import torch


def pytest_configure(config):
    config.addinivalue_line("markers", "e2e: end-to-end test that runs the kdcore CLI (slow)")


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
