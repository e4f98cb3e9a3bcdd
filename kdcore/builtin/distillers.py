"""Built-in distiller: one or more frozen teachers tapped by module path."""

from __future__ import annotations

from ..components import Distiller
from ..hookspecs import hookimpl
from ..specs import Component


@hookimpl
def kdcore_distillers() -> list[Component]:
    return [Component("teacher", Distiller,
                      "frozen teachers, features tapped by module path, one head per point")]
