"""kdcore: knowledge distillation for PyTorch, a small core plus installable plugins.

Plugins import :data:`hookimpl` and return :class:`Component` specs from the hooks in
:mod:`kdcore.hookspecs`. Users build components by name with :func:`build` and list them with
:func:`components`, or run whole experiments with ``kdcore run``.
"""

from .api import distill
from .components import Algorithm, Batch, Connector, Distiller, DistillationHead, Loss, PreTraining
from .components.distiller import DistillPoint
from .errors import UserError
from .hookspecs import hookimpl
from .registry import build, components
from .specs import KINDS, Component, Preset
from .task import ClassificationTask, Task
from .version import PLUGIN_API_VERSION, __version__

__all__ = [
    "Algorithm", "Batch", "ClassificationTask", "Component", "Connector", "DistillPoint",
    "Distiller", "DistillationHead", "KINDS", "Loss", "PLUGIN_API_VERSION", "Preset", "PreTraining", "Task",
    "UserError", "__version__", "build", "components", "distill", "gather_rows", "hookimpl",
    "mean_across_ranks",
]


#: helpers plugins call under DDP, loaded on first use: ``import kdcore`` leaves the engine out
_DISTRIBUTED = ("gather_rows", "mean_across_ranks")


def __getattr__(name: str) -> object:
    if name in _DISTRIBUTED:
        from .engine import distributed
        return getattr(distributed, name)
    if name == "Stage":  # the deprecated name of PreTraining
        from .components import deprecated_stage
        return deprecated_stage()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
