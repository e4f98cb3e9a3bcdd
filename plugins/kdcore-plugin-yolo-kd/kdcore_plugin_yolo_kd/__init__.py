"""Objectness-scaled distillation with feature-map NMS (Mehta & Ozturk, 2018) for kdcore."""

from importlib.metadata import version

__version__ = version("kdcore-plugin-yolo-kd")  # pyproject.toml's, as installed
