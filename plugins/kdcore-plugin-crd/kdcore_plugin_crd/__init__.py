"""Contrastive representation distillation (Tian, Krishnan, Isola, ICLR 2020) for kdcore."""

from importlib.metadata import version

__version__ = version("kdcore-plugin-crd")  # pyproject.toml's, as installed
