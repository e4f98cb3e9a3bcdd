"""The kit's test set-up (the ``e2e`` marker, one intra-op thread per test) and ``tiny``."""

import pytest

from kdcore.testing.e2e import TINY_SETS
from kdcore.testing.pytest_setup import one_thread, pytest_configure  # noqa: F401


@pytest.fixture
def tiny() -> list[str]:
    """``--set`` overrides for a seconds-long run: 256 images, batches of 64."""
    return [*TINY_SETS, "data.batch_size=64"]
