"""timm's architectures as kdcore models."""

from importlib.metadata import version

__version__ = version("kdcore-plugin-timm")  # pyproject.toml's, as installed
