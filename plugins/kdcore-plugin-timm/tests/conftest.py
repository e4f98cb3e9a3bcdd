"""The kit's test set-up: the ``e2e`` marker."""

from kdcore.testing.pytest_setup import pytest_configure  # noqa: F401
