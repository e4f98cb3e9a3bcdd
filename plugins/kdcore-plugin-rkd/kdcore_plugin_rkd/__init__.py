"""Relational knowledge distillation (Park et al., CVPR 2019) for kdcore."""

from importlib.metadata import version

__version__ = version("kdcore-plugin-rkd")  # pyproject.toml's, as installed
