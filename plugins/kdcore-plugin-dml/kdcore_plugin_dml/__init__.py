"""Deep Mutual Learning (Zhang, Xiang, Hospedales, Lu, CVPR 2018) for kdcore."""

from importlib.metadata import version

__version__ = version("kdcore-plugin-dml")  # pyproject.toml's, as installed
