"""Factor Transfer (Kim, Park, Kwak, NeurIPS 2018) for kdcore."""

from importlib.metadata import version

__version__ = version("kdcore-plugin-ft")  # pyproject.toml's, as installed
