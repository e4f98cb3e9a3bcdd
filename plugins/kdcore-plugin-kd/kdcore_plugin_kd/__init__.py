"""Hinton knowledge distillation for kdcore."""

from importlib.metadata import version

__version__ = version("kdcore-plugin-kd")  # pyproject.toml's, as installed
