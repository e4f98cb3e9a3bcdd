"""``kdcore draw``: test images with the ground truth and each run's predictions (masks or boxes)."""

from importlib.metadata import version

__version__ = version("kdcore-plugin-draw")  # pyproject.toml's, as installed
