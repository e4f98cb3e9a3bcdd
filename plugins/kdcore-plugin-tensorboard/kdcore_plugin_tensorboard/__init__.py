"""TensorBoard logging for kdcore runs."""

from importlib.metadata import version

__version__ = version("kdcore-plugin-tensorboard")  # pyproject.toml's, as installed
