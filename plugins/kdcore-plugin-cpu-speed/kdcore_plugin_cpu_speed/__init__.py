"""CPU speed-ups for kdcore that the core does not carry: 2x2 max pooling by a small C kernel."""

from importlib.metadata import version

__version__ = version("kdcore-plugin-cpu-speed")  # pyproject.toml's, as installed
