"""The old name of :class:`kdcore.components.pretraining.PreTraining`, kept for plugins that
still import it (``kdcore.Stage`` warns; this module is the in-repo import path of the alias)."""

from .pretraining import PreTraining as Stage

__all__ = ["Stage"]
