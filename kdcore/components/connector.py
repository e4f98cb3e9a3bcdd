"""Base class of connectors: shape adapters between student and teacher features."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

if TYPE_CHECKING:
    from .head import DistillationHead
    from .pretraining import PreTraining


class Connector(nn.Module):
    """Maps one feature tensor to another. Trainable; never part of the teacher.

    Factories may accept ``in_shape`` and ``out_shape`` (per-sample shapes without the batch
    dimension): the head passes the shape of the feature the connector receives and the shape
    of the feature on the other side.
    """

    def stages(self, head: "DistillationHead") -> list["PreTraining"]:
        """Pre-training stages this connector needs (default: none)."""
        return []
