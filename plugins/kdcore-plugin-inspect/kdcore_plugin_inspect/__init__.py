"""``kdcore inspect``: the module paths a config's distill points name, and which layers of a
teacher and a student pair up (``--pair``)."""

from importlib.metadata import version

__version__ = version("kdcore-plugin-inspect")  # pyproject.toml's, as installed
