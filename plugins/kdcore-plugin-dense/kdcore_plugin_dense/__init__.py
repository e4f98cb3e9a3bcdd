"""Dense prediction for kdcore: segmentation and detection tasks, the ``fashion_scenes`` data set
that creates them, and the SegNet and YOLO models sized for its scenes."""

from importlib.metadata import version

__version__ = version("kdcore-plugin-dense")  # pyproject.toml's, as installed
