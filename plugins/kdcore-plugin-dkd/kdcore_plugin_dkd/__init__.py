"""Decoupled Knowledge Distillation (Zhao et al., CVPR 2022) for kdcore."""

from importlib.metadata import version

__version__ = version("kdcore-plugin-dkd")  # pyproject.toml's, as installed
