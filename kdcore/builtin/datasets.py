"""Built-in data sets."""

from __future__ import annotations

from ..hookspecs import hookimpl
from ..specs import Component


@hookimpl
def kdcore_datasets() -> list[Component]:
    return [
        Component("fashion_mnist", "kdcore.data.fashion_mnist:fashion_mnist",
                  "Fashion-MNIST from IDX files (Debian package dataset-fashion-mnist), in memory"),
        Component("mnist", "kdcore.data.fashion_mnist:mnist_idx", "MNIST from IDX files, in memory"),
    ]
