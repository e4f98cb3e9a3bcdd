"""The ``fast_max_pool`` model transform (``trainer.model_transforms: [fast_max_pool]``)."""

from __future__ import annotations

from torch import nn

from .fast_max_pool import use_fast_max_pool


class FastMaxPool:
    """Swap every plain 2x2 ``nn.MaxPool2d`` for :class:`~.fast_max_pool.FastMaxPool2d`, in
    place, in students and teachers alike; module paths and hooks stay."""

    def __call__(self, model: nn.Module, role: str) -> int:
        return use_fast_max_pool(model)
