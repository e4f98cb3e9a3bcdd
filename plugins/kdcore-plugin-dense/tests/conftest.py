"""The kit's test set-up: the ``e2e`` marker, and one intra-op thread per test."""

from kdcore.testing.pytest_setup import one_thread, pytest_configure  # noqa: F401
