"""The base classes every component derives from. Each fits on a screen."""

from .algorithm import Algorithm, Batch
from .connector import Connector
from .distiller import Distiller
from .head import DistillationHead
from .loss import Loss
from .stage import Stage

__all__ = ["Algorithm", "Batch", "Connector", "Distiller", "DistillationHead", "Loss", "Stage"]
