"""Data-free distillation by DeepInversion (Yin et al., CVPR 2020) for kdcore."""

from importlib.metadata import version

__version__ = version("kdcore-plugin-datafree")  # pyproject.toml's, as installed
