"""The base classes every component derives from. Each fits on a screen."""

import warnings

from .algorithm import Algorithm, Batch
from .connector import Connector
from .distiller import Distiller
from .head import DistillationHead
from .loss import Loss
from .pretraining import PreTraining

__all__ = ["Algorithm", "Batch", "Connector", "Distiller", "DistillationHead", "Loss", "PreTraining"]


def deprecated_stage() -> type[PreTraining]:
    """``Stage``, the old name of :class:`PreTraining` ("stage" also names model blocks):
    still importable for plugins outside the repo, with a warning at the line that uses it."""
    warnings.warn("kdcore.Stage is deprecated: use kdcore.PreTraining (the same class)",
                  DeprecationWarning, stacklevel=3)  # the caller of the module __getattr__
    return PreTraining


def __getattr__(name: str) -> object:
    if name == "Stage":
        return deprecated_stage()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
