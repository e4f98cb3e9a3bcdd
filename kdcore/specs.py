"""What a plugin returns from a hook: a named component with a factory.

Specs are plain data so the loader can see every provider of a name before resolving it, and so
the contract kit can assert on what a plugin declares without building anything.
"""

from __future__ import annotations

import importlib
import re
from typing import Any, Callable

import attrs

#: Component kinds, one hookspec each (``kdcore_<kind>s``).
KINDS: tuple[str, ...] = (
    "algorithm",
    "distiller",
    "head",
    "connector",
    "loss",
    "model",
    "dataset",
)

_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")


def _check_name(instance: Any, attribute: Any, value: str) -> None:
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise ValueError(
            f"component name {value!r} must be lower-case letters, digits and '_', "
            "starting with a letter"
        )


@attrs.frozen
class Component:
    """A component a plugin provides.

    :param name: short name used in configs (``kd``, ``linear``, ``resnet8x4``).
    :param factory: a callable returning the component, or ``"module:attr"`` resolved on first
        use so that listing plugins never imports heavy code.
    :param summary: one line shown by ``kdcore list`` and ``kdcore plugins``.
    :param presets: optional ``{preset_name: path}`` of YAML configs shipped with the plugin.
    """

    name: str = attrs.field(validator=_check_name)
    factory: Callable[..., Any] | str
    summary: str = ""
    presets: dict[str, str] = attrs.field(factory=dict)

    def resolve(self) -> Callable[..., Any]:
        """Return the factory callable, importing it if it was given as ``"module:attr"``."""
        if callable(self.factory):
            return self.factory
        module_name, _, attr = self.factory.partition(":")
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
        return obj


@attrs.frozen
class Registered:
    """A component together with where it came from."""

    kind: str
    plugin: str
    component: Component

    @property
    def id(self) -> str:
        return f"{self.plugin}:{self.component.name}"
