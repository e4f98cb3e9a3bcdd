"""Fashion-MNIST (and MNIST) from IDX files, e.g. Debian's ``dataset-fashion-mnist``."""

from __future__ import annotations

import hashlib
import os

import torch

from ..errors import UserError
from ..task import ClassificationTask
from .idx import read_idx
from .source import DataSource, TensorSplit

FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
#: Channel mean and std of the Fashion-MNIST training images, in [0, 1] units.
FASHION_MNIST_STATS = (0.2860, 0.3530)
MNIST_STATS = (0.1307, 0.3081)


def find_file(root: str, stem: str, install_hint: str) -> str:
    """``root/stem.gz``, else ``root/stem``; missing, a one-line error ending in ``install_hint``
    (public: kdcore-plugin-dense composes its scenes from these files)."""
    for candidate in (stem + ".gz", stem):
        path = os.path.join(root, candidate)
        if os.path.exists(path):
            return path
    raise UserError(f"data file {os.path.join(root, stem + '.gz')} is missing; {install_hint}",
                    key_path="data")


def load_idx_split(root: str, split: str, stats: tuple[float, float], install_hint: str) -> TensorSplit:
    """Decode one split into normalised float images ``(N, 1, 28, 28)`` and int64 labels."""
    images_path = find_file(root, FILES[split][0], install_hint)
    labels_path = find_file(root, FILES[split][1], install_hint)
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise UserError(f"data files {images_path} and {labels_path} do not match: "
                        f"{tuple(images.shape)} images, {tuple(labels.shape)} labels",
                        key_path="data")
    mean, std = stats
    inputs = (images.float().div_(255.0).sub_(mean).div_(std)).unsqueeze(1).contiguous()
    return TensorSplit(inputs, labels.long())


def _empty() -> TensorSplit:
    return TensorSplit(torch.zeros(0, 1, 28, 28), torch.zeros(0, dtype=torch.long))


def _idx_source(name: str, root: str, stats: tuple[float, float], hint: str,
                splits: tuple[str, ...] = ("train", "test")) -> DataSource:
    unknown = [s for s in splits if s not in FILES]
    if unknown:
        raise UserError(f"data.splits: unknown split {unknown[0]!r}; choose from train, test",
                        key_path="data.splits")
    train = load_idx_split(root, "train", stats, hint) if "train" in splits else _empty()
    test = load_idx_split(root, "test", stats, hint) if "test" in splits else _empty()
    digest = hashlib.sha1(f"{name}|{os.path.abspath(root)}|{len(train)}|{stats}".encode()).hexdigest()
    return DataSource(train=train, test=test, task=ClassificationTask(10),
                      input_shape=(1, 28, 28), num_classes=10, fingerprint=digest[:16], name=name)


def fashion_mnist(root: str = FASHION_MNIST_ROOT, splits: tuple[str, ...] = ("train", "test")) -> DataSource:
    """The 60k/10k Fashion-MNIST splits, normalised, in memory.

    ``splits: [test]`` never opens the training files (data-free distillation)."""
    hint = ("install it with 'sudo apt-get install dataset-fashion-mnist' (Debian/Ubuntu), or set "
            "data.root to a folder holding the four *-ubyte.gz files")
    return _idx_source("fashion_mnist", root, FASHION_MNIST_STATS, hint, tuple(splits))


def mnist_idx(root: str, splits: tuple[str, ...] = ("train", "test")) -> DataSource:
    """MNIST from a folder with the four original IDX files (``train-images-idx3-ubyte.gz`` ...)."""
    hint = "set data.root to a folder holding the four MNIST *-ubyte(.gz) files"
    return _idx_source("mnist", root, MNIST_STATS, hint, tuple(splits))
