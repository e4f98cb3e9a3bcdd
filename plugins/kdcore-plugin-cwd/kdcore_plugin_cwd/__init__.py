"""Channel-Wise Distillation (Shu et al., ICCV 2021) and pixel-wise KD for dense prediction."""

from importlib.metadata import version

__version__ = version("kdcore-plugin-cwd")  # pyproject.toml's, as installed
