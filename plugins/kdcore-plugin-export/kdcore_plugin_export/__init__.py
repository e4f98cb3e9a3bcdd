"""``kdcore export``: a run's distilled student as a TorchScript or ONNX file, checked against PyTorch."""

from importlib.metadata import version

__version__ = version("kdcore-plugin-export")  # pyproject.toml's, as installed
