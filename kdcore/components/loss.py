"""Base class of distillation losses."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from .head import DistillationHead
    from .pretraining import PreTraining


class Loss(nn.Module):
    """A distillation loss: ``forward(student, teacher, **extra) -> scalar tensor``.

    ``student`` and ``teacher`` are the (connector-mapped) features of one distill point. The
    head applies the weight. ``extra`` carries ``targets``, ``indices``, ``epoch`` and ``step``.

    Class attributes a loss may override:

    * ``same_shape`` - the head checks that both sides have the same shape before calling
      (``False`` for relational losses such as RKD or CRD that compare within a side).
    * ``synced_buffers`` - names of buffers the loss keeps identical on every process itself,
      typically state over the whole data set updated from the global batch with
      :func:`kdcore.gather_rows` (CRD's memory banks). Under DDP they are left out of the
      per-step buffer broadcast, which would otherwise copy rank 0's over the others.
    """

    same_shape: bool = True
    synced_buffers: tuple[str, ...] = ()

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, **extra: Any) -> torch.Tensor:
        raise NotImplementedError

    def stages(self, head: "DistillationHead") -> list["PreTraining"]:
        """Pre-training stages this loss needs before the main training (default: none)."""
        return []
