"""The plugin contract: the installed distribution is a well-formed kdcore plugin."""

from __future__ import annotations

import contextlib
import importlib
import json
import os
from collections.abc import Iterator
from importlib import metadata
from typing import Any, ClassVar

from .. import plugins as plugin_loader
from ..plugins import GROUP, Plugins, _declared_range, _unknown_hooks
from ..registry import components
from ..specs import KINDS, Registered
from ..version import __version__, version_in_range
from ._base import OptOut, check, environ, fail


def isolated_plugins(**modules: Any) -> Plugins:
    """The built-ins plus ``modules`` (``name=module_or_import_path``), no installed plugins:
    test a plugin module before it is installed, or several in-test fakes together.

    Example: ``isolated_plugins(acme="acme_kd_losses.plugin")``.
    """
    loaded = Plugins(load_entry_points=False)
    for name, module in modules.items():
        if isinstance(module, str):
            module = importlib.import_module(module)
        unknown = _unknown_hooks(module)
        if unknown:
            raise AssertionError(f"plugin {name!r}: " + "; ".join(unknown))
        loaded.register(module, name=name)
    return loaded


@contextlib.contextmanager
def using_plugins(loaded: Plugins | None) -> Iterator[Plugins | None]:
    """Make ``loaded`` the process-wide plugin set for the block (``None``: rebuilt on first use
    from what is installed), then put the previous one back."""
    previous = plugin_loader._current
    plugin_loader.reset_plugins(loaded)
    try:
        yield loaded
    finally:
        plugin_loader.reset_plugins(previous)


class PluginContract(OptOut):
    """Checks that an installed distribution is a working kdcore plugin.

    ::

        class TestPlugin(PluginContract):
            distribution = "acme-kd-losses"
            entry_point = "acme"
            components = {"loss": ["cosine_feature"]}

    The plugin is loaded on its own (``KDCORE_PLUGINS=<entry_point>``), as a user would see it.
    """

    distribution: ClassVar[str] = ""
    entry_point: ClassVar[str] = ""
    #: ``{kind: [short names]}`` the plugin must provide.
    components: ClassVar[dict[str, list[str]]] = {}

    def dist(self) -> metadata.Distribution:
        check(self.distribution and self.entry_point,
              f"{type(self).__name__}: set distribution = '<pip name>' and entry_point = '<name>'")
        try:
            return metadata.distribution(self.distribution)
        except metadata.PackageNotFoundError:
            fail(f"distribution {self.distribution!r} is not installed; run 'pip install -e .' in "
                 f"the plugin folder")

    def entry(self) -> metadata.EntryPoint:
        dist = self.dist()
        ours = [ep for ep in dist.entry_points if ep.group == GROUP]
        match = [ep for ep in ours if ep.name == self.entry_point]
        if not match:
            found = ", ".join(ep.name for ep in ours) or "none"
            fail(f"{self.distribution} advertises no {GROUP!r} entry point named "
                 f"{self.entry_point!r} (it has: {found}); add to pyproject.toml:\n"
                 f"[project.entry-points.kdcore]\n{self.entry_point} = \"<package>.plugin\"\n"
                 f"and reinstall (pip install -e .) so entry_points.txt is written")
        return match[0]

    def fresh(self) -> Plugins:
        """A new plugin set with this plugin alone (plus the built-ins)."""
        with environ(KDCORE_PLUGINS=self.entry_point):
            return Plugins()

    def provided(self, loaded: Plugins) -> list[Registered]:
        return [r for kind in KINDS for r in components(kind, loaded) if r.plugin == self.entry_point]

    # -- tests ------------------------------------------------------------------------------

    def test_distribution_installed(self) -> None:
        self.dist()

    def test_advertises_entry_point(self) -> None:
        self.entry()

    def test_declares_kdcore_range(self) -> None:
        """A kdcore range with an upper bound lets a future incompatible kdcore skip the plugin
        with a clear message instead of failing half-way."""
        ep = self.entry()
        spec = _declared_range(ep.load(), ep)
        check(spec, f"{self.distribution} declares no kdcore range; add \"kdcore>=0.1,<0.2\" to "
                    f"[project] dependencies (or KDCORE_REQUIRES in the entry-point module)")
        check("<" in spec, f"{self.distribution} declares kdcore {spec} without an upper bound; "
                           f"use e.g. >=0.1,<0.2")
        check(version_in_range(__version__, spec),
              f"{self.distribution} needs kdcore {spec}, but this is kdcore {__version__}")

    def test_loads_cleanly(self) -> None:
        loaded = self.fresh()
        status = loaded.status.get(self.entry_point)
        check(status is not None, f"kdcore did not see entry point {self.entry_point!r}")
        check(status.state == "ok", f"plugin {self.entry_point!r} is {status.state}: {status.error}")
        self.provided(loaded)  # calls every hook, which records hook errors as warnings
        check(not status.warnings, f"plugin {self.entry_point!r}: {'; '.join(status.warnings)}")

    def test_declared_components_present(self) -> None:
        provided = self.provided(self.fresh())
        check(provided, f"plugin {self.entry_point!r} provides no component")
        ids = {(r.kind, r.component.name) for r in provided}
        for kind, names in self.components.items():
            for name in names:
                check((kind, name) in ids, f"plugin {self.entry_point!r} does not provide {kind} "
                                           f"{name!r}; it provides {sorted(ids)}")

    def test_no_clash_with_other_plugins(self) -> None:
        """A short name the core or another installed plugin already uses stays theirs (the
        plugin's component is then reachable by its id only, with a warning): flag every clash,
        against the core and against every plugin installed next to this one."""
        everyone = Plugins()
        mine = {(r.kind, r.component.name) for r in self.provided(everyone)}
        clashes = sorted(f"{r.kind} {r.component.name!r} ({r.id})" for kind in KINDS
                         for r in components(kind, everyone)
                         if r.plugin != self.entry_point and (r.kind, r.component.name) in mine)
        check(not clashes, f"plugin {self.entry_point!r} reuses names that others provide: "
                           f"{', '.join(clashes)}; rename its components (the first plugin keeps "
                           f"a short name, see docs/plugins.md)")

    def test_unique_names_per_kind(self) -> None:
        names = [(r.kind, r.component.name) for r in self.provided(self.fresh())]
        dupes = sorted({n for n in names if names.count(n) > 1})
        check(not dupes, f"plugin {self.entry_point!r} declares {dupes} more than once")

    def test_factories_resolve(self) -> None:
        for reg in self.provided(self.fresh()):
            if reg.kind == "preset":
                continue  # test_presets_exist
            try:
                factory = reg.component.resolve()
            except Exception as exc:
                fail(f"{reg.id}: factory {reg.component.factory!r} does not resolve: "
                     f"{type(exc).__name__}: {exc}")
            check(callable(factory), f"{reg.id}: factory is not callable")

    def test_commands_are_click_commands_of_their_own_names(self) -> None:
        """A command's factory is a :class:`click.Command`, and its name is not one of kdcore's
        own commands (which keep their names: the plugin's would be reachable only by id)."""
        import click

        from ..cli import main

        for reg in self.provided(self.fresh()):
            if reg.kind != "command":
                continue
            check(reg.component.name not in main.commands,
                  f"{reg.id}: 'kdcore {reg.component.name}' is kdcore's own command; rename it")
            command = reg.component.resolve()
            check(isinstance(command, click.Command),
                  f"{reg.id}: a command's factory must be a click.Command (decorate it with "
                  f"@click.command()), got {type(command).__name__}")

    def test_presets_exist(self) -> None:
        """Every preset file is there (shipped as package data) and is a YAML mapping."""
        import yaml

        for reg in self.provided(self.fresh()):
            paths = dict(reg.component.presets)
            if reg.kind == "preset":
                try:
                    paths[reg.component.name] = reg.component.resolve()
                except Exception as exc:
                    fail(f"{reg.id}: preset file {reg.component.factory!r} not found ({exc}); is "
                         f"it listed in [tool.setuptools.package-data]?")
            for name, path in paths.items():
                check(os.path.isfile(path), f"{reg.id}: preset {name!r} file {path} does not exist "
                                            f"(is it listed in package-data?)")
                with open(path, encoding="utf-8") as f:
                    check(isinstance(yaml.safe_load(f), dict), f"{reg.id}: preset {path} is not a "
                                                              f"YAML mapping of config keys")

    def test_listed_by_kdcore_plugins(self) -> None:
        from click.testing import CliRunner

        from ..cli import main

        with using_plugins(self.fresh()):
            result = CliRunner().invoke(main, ["plugins", "--json"])
        check(result.exit_code == 0, f"'kdcore plugins --json' failed: {result.output}")
        rows = {row["name"]: row for row in json.loads(result.stdout)}
        row = rows.get(self.entry_point)
        check(row is not None, f"'kdcore plugins' does not list {self.entry_point!r}")
        check(row["distribution"] == self.dist().metadata["Name"] and row["state"] == "ok",
              f"'kdcore plugins' shows {row}")
