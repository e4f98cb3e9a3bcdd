"""Attention Transfer (Zagoruyko & Komodakis, ICLR 2017) for kdcore."""

from importlib.metadata import version

__version__ = version("kdcore-plugin-at")  # pyproject.toml's, as installed
