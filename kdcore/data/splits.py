"""A run's data after its limits and validation hold-out (:func:`kdcore.assemble.load_data`
makes it): here, below both the assembly and the engine, so the engine's teachers read it
without importing the assembly."""

from __future__ import annotations

from typing import Any

import attrs
import torch

from .source import DataSource, TensorSplit


@attrs.define
class Splits:
    """The data of a run after limits and the validation hold-out are applied."""

    source: DataSource
    train: Any
    val: Any | None
    test: Any
    student_train: Any = None
    #: the training split before ``data.train_limit``: what teachers train on (their own limit)
    full_train: Any = None

    def __attrs_post_init__(self) -> None:
        if self.student_train is None:
            self.student_train = self.train
        if self.full_train is None:
            self.full_train = self.train

    @property
    def evaluation(self) -> dict[str, Any]:
        return {"val": self.val, "test": self.test} if self.val is not None else {"test": self.test}


def take(data: Any, indices: torch.Tensor) -> Any:
    """The samples ``indices`` of a split: a :class:`TensorSplit` stays one, any other
    dataset becomes a ``Subset``."""
    if isinstance(data, TensorSplit):
        return data.subset(indices)
    return torch.utils.data.Subset(data, indices.tolist())
