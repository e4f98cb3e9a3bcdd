"""Built-in head: connectors then weighted losses."""

from __future__ import annotations

from ..components import DistillationHead
from ..hookspecs import hookimpl
from ..specs import Component


@hookimpl
def kdcore_heads() -> list[Component]:
    return [Component("distill", DistillationHead,
                      "optional student/teacher connectors, then one or more weighted losses")]
