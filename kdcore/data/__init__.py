"""Data sets and the two data paths: in-memory tensors, and per-sample torch Datasets."""

from .source import DataSource, TensorSplit

__all__ = ["DataSource", "TensorSplit"]
