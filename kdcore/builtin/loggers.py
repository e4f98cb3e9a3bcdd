"""The built-in logger: metrics.jsonl (always on; trackers come from plugins)."""

from __future__ import annotations

from ..hookspecs import hookimpl
from ..specs import Component


@hookimpl
def kdcore_loggers() -> list[Component]:
    return [Component("jsonl", "kdcore.loggers:JsonlLogger",
                      "metrics.jsonl in the run directory, one row per epoch (always on)")]
