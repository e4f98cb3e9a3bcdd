"""Repository-wide test set-up: one private teacher cache for the whole session, so every
end-to-end test (core and plugins) trains the tiny teacher once and reuses it."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    os.environ["KDCORE_CACHE_DIR"] = str(tmp_path_factory.mktemp("kdcore-cache"))
