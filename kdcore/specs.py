"""What a plugin returns from a hook: a named component with a factory.

Specs are plain data so the loader can see every provider of a name before resolving it, and so
the contract kit can assert on what a plugin declares without building anything.
"""

from __future__ import annotations

import importlib
import importlib.resources
import os
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
    "preset",
    "model_transform",
    "logger",
    "command",
    "callback",
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
class Preset(Component):
    """A run config a plugin ships, by name: ``kdcore run --preset NAME``, ``kdcore list preset``.

    :param name: the preset's name (lower-case letters, digits and '_'), e.g. ``rkd``.
    :param factory: where the YAML file is: ``"package:relative/path.yaml"`` (a file inside an
        installed package, found with :mod:`importlib.resources`, so it works from a wheel as
        from a checkout) or an absolute path.
    :param summary: one line shown by ``kdcore list preset``.
    """

    def resolve(self) -> str:  # type: ignore[override]
        """The YAML file's path; ``FileNotFoundError`` when it is not there (not shipped as
        package data, or a typo)."""
        text = str(self.factory)
        if ":" in text and not os.path.isabs(text) and not re.match(r"^[A-Za-z]:[\\/]", text):
            package, _, relative = text.partition(":")
            found = str(importlib.resources.files(package).joinpath(relative))
        else:
            found = text
        if not os.path.isfile(found):
            raise FileNotFoundError(f"no such file: {found}")
        return found


@attrs.frozen
class Registered:
    """A component together with where it came from."""

    kind: str
    plugin: str
    component: Component

    @property
    def id(self) -> str:
        return f"{self.plugin}:{self.component.name}"
