"""Registers the ``e2e`` marker used by this plugin's end-to-end CLI test."""


def pytest_configure(config):
    config.addinivalue_line("markers", "e2e: end-to-end test that runs the kdcore CLI (slow)")
