"""Core test fixtures: tiny-run overrides, one thread, and a skip when the data is missing."""

from __future__ import annotations

import os

import pytest
import torch

FASHION = "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz"

#: --set overrides that make any preset a seconds-long run on a few hundred images.
TINY = ["data.train_limit=256", "data.test_limit=256", "trainer.epochs=1",
        "teachers.0.train.epochs=1", "teachers.0.train.train_limit=256", "trainer.progress=false",
        "data.batch_size=64"]


@pytest.fixture
def tiny() -> list[str]:
    """``--set`` overrides for a seconds-long run."""
    return list(TINY)


@pytest.fixture(autouse=True, scope="session")
def _one_thread() -> None:
    torch.set_num_threads(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.path.exists(FASHION):
        return
    skip = pytest.mark.skip(reason="needs dataset-fashion-mnist (apt-get install dataset-fashion-mnist)")
    for item in items:
        if "fashion" in item.keywords:
            item.add_marker(skip)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "fashion: needs the Fashion-MNIST Debian package")
    config.addinivalue_line("markers", "e2e: end-to-end run through the CLI")
