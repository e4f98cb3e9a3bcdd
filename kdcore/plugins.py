"""Plugin loading: built-ins first, then every ``kdcore`` entry point, each on its own.

A plugin that fails to import, fails to register, declares an incompatible kdcore version or a
newer plugin API (``KDCORE_PLUGIN_API``), or implements a hook that does not exist is recorded
in :class:`PluginStatus` and skipped; every other plugin and every CLI command keeps working.
``KDCORE_PLUGINS=a,b`` restricts which third-party plugins load (by entry-point name or
distribution name; empty = none).
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import attrs
import pluggy
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from . import hookspecs
from .errors import did_you_mean
from .version import PLUGIN_API_VERSION, __version__, version_in_range

GROUP = "kdcore"
#: the modules of kdcore/builtin/: the core's own components, registered through the plugins' hooks
BUILTINS = ("algorithms", "distillers", "heads", "connectors", "losses", "models", "datasets", "presets",
            "loggers")


def dist_label(distribution: str, version: str) -> str:
    """``distribution version`` as plugin lines show it (an in-process plugin has no version)."""
    return " ".join(filter(None, (distribution, version)))


@attrs.define
class PluginStatus:
    """What happened to one plugin. ``state`` is ``ok``, ``failed``, ``incompatible`` or
    ``disabled``."""

    name: str
    distribution: str
    version: str
    state: str = "ok"
    error: str = ""
    requires_kdcore: str = ""
    warnings: list[str] = attrs.field(factory=list)
    #: when the distribution was installed (its metadata file's time; 0 when unknown): an older
    #: plugin keeps a component name that a newer one also claims
    installed_at: float = 0.0

    @property
    def dist_label(self) -> str:
        return dist_label(self.distribution, self.version)

    def line(self) -> str:
        return f"kdcore: plugin {self.name!r} ({self.dist_label}) {self.state}: {self.error}"


def _unknown_hooks(module: Any) -> list[str]:
    """Functions marked ``@kdcore.hookimpl`` whose name matches no hookspec."""
    known = {n for n in dir(hookspecs) if n.startswith("kdcore_")}
    problems = []
    for attr in dir(module):
        obj = getattr(module, attr, None)
        if callable(obj) and hasattr(obj, f"{GROUP}_impl") and attr not in known:
            problems.append(f"hook {attr!r} matches no kdcore hookspec{did_you_mean(attr, known)}")
    return problems


def _failing_line(exc: BaseException) -> str:
    """`` (at FILE:LINE)``: the innermost line that failed outside importlib (the plugin's own,
    or a module it imports)."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if "importlib" not in f.filename and not f.filename.startswith("<")]
    return f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""


def _declared_range(module: Any, ep: EntryPoint) -> str:
    """The kdcore range a plugin declares: ``KDCORE_REQUIRES`` in its module (when imported),
    else its distribution's ``kdcore`` requirement."""
    declared = getattr(module, "KDCORE_REQUIRES", "")  # "" before the import (module None)
    if declared:
        return declared
    for text in (ep.dist.requires or []) if ep.dist else []:
        try:
            req = Requirement(text)
        except InvalidRequirement:  # not ours to judge: pip reports it
            continue
        if canonicalize_name(req.name) == "kdcore":  # as written: packaging keeps the order
            return ",".join(str(s) for s in req.specifier)
    return ""


def _installed_at(dist: Any) -> float:
    """When ``dist`` was installed: the time of the ``METADATA`` file in its ``.dist-info``
    folder (0 when unknown, e.g. an ``.egg-info``, which has none)."""
    path = getattr(dist, "_path", None)  # importlib.metadata's PathDistribution: that folder
    try:
        return os.path.getmtime(os.path.join(str(path), "METADATA")) if path else 0.0
    except OSError:
        return 0.0


def _selection() -> set[str] | None:
    """The names in ``KDCORE_PLUGINS`` (``None`` when it is not set: every plugin loads)."""
    wanted = os.environ.get("KDCORE_PLUGINS")
    return None if wanted is None else {w.strip() for w in wanted.split(",") if w.strip()}


class Plugins:
    """The loaded plugins: a pluggy manager plus a status line per plugin."""

    def __init__(self, *, load_entry_points: bool = True) -> None:
        self.pm = pluggy.PluginManager(GROUP)
        self.pm.add_hookspecs(hookspecs)
        self.status: dict[str, PluginStatus] = {}
        #: each kind's (hook implementations, registered components), collected on first use
        #: and again when the implementations change (``registry.components``)
        self.found: dict[str, tuple[tuple[Any, ...], list[Any]]] = {}
        #: whether warnings are printed as they are found (the process-wide set: ``get_plugins``)
        self.echo = False
        #: plugins registered in-process (:meth:`register`), in order
        self.in_process: list[str] = []
        for name in BUILTINS:
            self.pm.register(importlib.import_module(f"kdcore.builtin.{name}"), name=name)
        if load_entry_points:
            for ep in sorted(entry_points(group=GROUP), key=lambda e: e.name):
                self._load(ep)

    def _load(self, ep: EntryPoint) -> None:
        dist = ep.dist.metadata["Name"] if ep.dist else "?"
        version = ep.dist.version if ep.dist else "?"
        status = PluginStatus(ep.name, dist, version, installed_at=_installed_at(ep.dist))
        if ep.name in self.status:
            first = self.status[ep.name]
            status.state, status.error = "failed", (
                f"plugin name {ep.name!r} is also claimed by {first.distribution} "
                f"{first.version}; skipped")
            self.status[f"{ep.name}@{dist}"] = status
            return
        self.status[ep.name] = status
        selection = _selection()
        if selection is not None and not {ep.name, dist} & selection:
            status.state, status.error = "disabled", "not listed in KDCORE_PLUGINS"
            return
        # the distribution's declared range is checked before importing: a plugin built for
        # another kdcore may not even import against this one
        if self._incompatible(status, _declared_range(None, ep)):
            return
        try:
            module = ep.load()
        except Exception as exc:  # a broken plugin must not take the rest down
            status.state, status.error = "failed", f"import failed: {type(exc).__name__}: {exc}{_failing_line(exc)}"
            return
        if self._incompatible(status, _declared_range(module, ep)) or self._newer_api(status, module):
            return
        unknown = _unknown_hooks(module)
        if unknown:
            status.state, status.error = "failed", "; ".join(unknown)
            return
        try:
            self.pm.register(module, name=ep.name)
        except Exception as exc:
            self.pm.unregister(name=ep.name)
            status.state, status.error = "failed", f"register failed: {type(exc).__name__}: {exc}"

    @staticmethod
    def _incompatible(status: PluginStatus, declared: str) -> bool:
        status.requires_kdcore = declared
        try:
            fits = not declared or version_in_range(__version__, declared)
        except Exception as exc:  # a malformed range, e.g. KDCORE_REQUIRES = "0.2"
            status.state = "failed"
            status.error = (f"declares an invalid kdcore range {declared!r} ({type(exc).__name__}); "
                            f"write it like '>=0.1,<0.2'")
            return True
        if not fits:
            status.state = "incompatible"
            status.error = (f"needs kdcore {declared}, this is kdcore {__version__}; "
                            f"upgrade one of them")
            return True
        return False

    @staticmethod
    def _newer_api(status: PluginStatus, module: Any) -> bool:
        """A plugin written for a newer plugin API (``KDCORE_PLUGIN_API`` in its entry-point
        module) than this kdcore's :data:`PLUGIN_API_VERSION` is refused before it registers."""
        api = getattr(module, "KDCORE_PLUGIN_API", PLUGIN_API_VERSION)
        if type(api) is not int:
            status.state, status.error = "failed", (
                f"declares KDCORE_PLUGIN_API = {api!r}; write the plugin API version it was "
                f"written for as an integer (this kdcore has {PLUGIN_API_VERSION})")
        elif api > PLUGIN_API_VERSION:
            status.state, status.error = "incompatible", (
                f"needs kdcore plugin API {api}, kdcore {__version__} has plugin API "
                f"{PLUGIN_API_VERSION}; upgrade kdcore, or install a release of the plugin "
                f"made for plugin API {PLUGIN_API_VERSION}")
        return status.state != "ok"

    def warn(self, name: str, message: str) -> None:
        """Record a problem of plugin ``name`` that skips part of it, not all of it."""
        status = self.status.get(name)
        if status is not None:
            if message in status.warnings:  # the same hook collected again: said already
                return
            status.warnings.append(message)
        if self.echo:
            where = f" ({status.dist_label})" if status is not None else ""
            print(f"kdcore: plugin {name!r}{where} warning: {message}", file=sys.stderr)

    def unmatched_selection(self) -> list[str]:
        """Names in ``KDCORE_PLUGINS`` that match no installed plugin, each with a did-you-mean."""
        known = {s.name for s in self.status.values()} | {s.distribution for s in self.status.values()}
        notes = []
        for name in sorted((_selection() or set()) - known):
            notes.append(f"kdcore: KDCORE_PLUGINS names {name!r}, which matches no installed plugin"
                         f"{did_you_mean(name, known)}")
        return notes

    def troubled(self) -> list[str]:
        """Plugins that failed to load, or loaded with warnings (components skipped)."""
        return [s.name for s in self.status.values() if s.state in ("failed", "incompatible") or s.warnings]

    def register(self, module: Any, name: str) -> None:
        """Register an in-process plugin (tests, notebooks); it comes after installed plugins
        when a component name clashes."""
        self.pm.register(module, name=name)
        self.status[name] = PluginStatus(name, "<in-process>", "", installed_at=float("inf"))
        self.in_process.append(name)

    def precedence(self, name: str) -> tuple[float, float, str]:
        """Sort key of plugin ``name`` when several provide one component name: the core
        first, then installed plugins from the earliest installed, then in-process ones."""
        if name == "kdcore":
            return (0, 0.0, "")
        if name in self.in_process:
            return (2, float(self.in_process.index(name)), name)
        status = self.status.get(name)
        return (1, status.installed_at if status else float("inf"), name)

    def unregister(self, name: str) -> None:
        self.pm.unregister(name=name)
        self.status.pop(name, None)
        if name in self.in_process:
            self.in_process.remove(name)

    def plugin_name(self, plugin_obj: Any) -> str:
        name = self.pm.get_name(plugin_obj) or "?"
        return "kdcore" if name in BUILTINS else name


_current: Plugins | None = None


def get_plugins() -> Plugins:
    """The process-wide plugin set, built on first use (never at import time)."""
    global _current
    if _current is None:
        _current = Plugins()
        for status in _current.status.values():
            if status.state in ("failed", "incompatible"):
                print(status.line(), file=sys.stderr)
        for note in _current.unmatched_selection():
            print(note, file=sys.stderr)
        _current.echo = True
    return _current


def reset_plugins(plugins: Plugins | None = None) -> None:
    """Replace (or drop, so the next use rebuilds) the process-wide plugin set."""
    global _current
    _current = plugins
