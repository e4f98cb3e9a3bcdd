"""A Comprehensive Overhaul of Feature Distillation (Heo et al., ICCV 2019) for kdcore."""

from importlib.metadata import version

__version__ = version("kdcore-plugin-ofd")  # pyproject.toml's, as installed
