"""``kdcore compare``: every method on your own config, over seeds, in one table."""

from importlib.metadata import version

__version__ = version("kdcore-plugin-compare")  # pyproject.toml's, as installed
