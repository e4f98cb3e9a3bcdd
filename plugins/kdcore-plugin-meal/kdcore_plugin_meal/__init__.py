"""MEAL V2 (Shen & Savvides, 2020): ensemble distillation with a discriminator, for kdcore."""

from importlib.metadata import version

__version__ = version("kdcore-plugin-meal")  # pyproject.toml's, as installed
