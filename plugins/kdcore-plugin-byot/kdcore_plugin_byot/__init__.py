"""Be Your Own Teacher (Zhang et al., ICCV 2019): self-distillation for kdcore."""

from importlib.metadata import version

__version__ = version("kdcore-plugin-byot")  # pyproject.toml's, as installed
