"""Test set-up a plugin's ``tests/conftest.py`` imports, so every plugin tests the same way::

    from kdcore.testing.pytest_setup import pytest_configure  # registers the e2e marker
    from kdcore.testing.pytest_setup import one_thread  # optional: one intra-op thread per test

Tiny tensors gain nothing from several threads, and on a loaded machine the threads only
contend; ``one_thread`` is autouse wherever it is imported and restores the count afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "e2e: end-to-end test that runs the kdcore CLI (slow)")


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
