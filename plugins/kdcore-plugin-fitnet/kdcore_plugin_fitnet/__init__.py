"""FitNets hints (Romero et al., ICLR 2015) for kdcore."""

from importlib.metadata import version

__version__ = version("kdcore-plugin-fitnet")  # pyproject.toml's, as installed
