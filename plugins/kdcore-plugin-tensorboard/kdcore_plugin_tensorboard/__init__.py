"""TensorBoard logging for kdcore runs."""

__version__ = "0.1.0"
