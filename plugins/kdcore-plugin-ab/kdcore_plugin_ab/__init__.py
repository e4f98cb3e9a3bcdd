"""Activation-boundary distillation (Heo, Lee, Yun, Choi, AAAI 2019) for kdcore."""

from importlib.metadata import version

__version__ = version("kdcore-plugin-ab")  # pyproject.toml's, as installed
