"""What a data-set factory returns."""

from __future__ import annotations

from typing import Any

import attrs
import torch


@attrs.define
class TensorSplit:
    """A split held in memory: decoded and normalised once, batched by index.

    ``inputs`` is ``(N, C, H, W)`` float; ``targets`` is indexable by a tensor of indices.
    """

    inputs: torch.Tensor
    targets: torch.Tensor

    def __len__(self) -> int:
        return int(self.inputs.shape[0])

    def subset(self, indices: torch.Tensor) -> "TensorSplit":
        return TensorSplit(self.inputs[indices], self.targets[indices])


@attrs.define
class DataSource:
    """Train and test splits plus the task that scores them.

    :param train: a :class:`TensorSplit` (fast path) or any map-style ``torch.utils.data.Dataset``
        returning ``(input, target)``.
    :param test: the same for evaluation.
    :param task: a :class:`kdcore.Task` (student loss and metric).
    :param input_shape: per-sample input shape ``(C, H, W)``.
    :param num_classes: passed to model factories that accept it (``None`` if not a class task).
    :param fingerprint: identifies the data and its preprocessing, for caches.
    """

    train: Any
    test: Any
    task: Any
    input_shape: tuple[int, ...]
    num_classes: int | None
    fingerprint: str
    name: str = ""
