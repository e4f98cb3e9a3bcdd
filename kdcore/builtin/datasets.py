"""Built-in data sets. Factories are "module:attr" strings so listing imports nothing heavy."""

from __future__ import annotations

from ..hookspecs import hookimpl
from ..specs import Component

_TV = "kdcore.data.torchvision_sets"


@hookimpl
def kdcore_datasets() -> list[Component]:
    return [
        Component("fashion_mnist", "kdcore.data.fashion_mnist:fashion_mnist",
                  "Fashion-MNIST from IDX files (Debian package dataset-fashion-mnist), in memory"),
        Component("mnist", "kdcore.data.fashion_mnist:mnist_idx", "MNIST from IDX files, in memory"),
        Component("cifar10", f"{_TV}:cifar10",
                  "CIFAR-10 from ROOT/cifar-10-batches-py (in memory, or per sample with sample_augment)"),
        Component("cifar100", f"{_TV}:cifar100",
                  "CIFAR-100 from ROOT/cifar-100-python (in memory, or per sample with sample_augment)"),
        Component("mnist_torchvision", f"{_TV}:mnist_torchvision",
                  "MNIST in torchvision's layout ROOT/MNIST/raw, per sample"),
        Component("image_folder", f"{_TV}:image_folder",
                  "images in class sub-folders (root, val_root), resized and centre-cropped"),
    ]
