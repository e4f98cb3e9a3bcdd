"""The core names kdcore's own plugins import beyond ``kdcore.__all__`` stay importable.

A plugin pins ``kdcore>=0.1,<0.2``, so pip lets a kdcore 0.1.x replace the one it was built on;
a renamed ``kdcore.engine.run.pick_device`` would then break an installed plugin at run time
without pip noticing. The names are collected from the plugins' source (``ast``), so the list
stays current by itself; docs/plugins.md ("Names beyond kdcore.__all__") shows it, regenerated
with ``python tests/test_plugin_api.py``."""

from __future__ import annotations

import ast
import importlib
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import kdcore

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "plugins.md"
BEGIN, END = "<!-- begin: python tests/test_plugin_api.py -->", "<!-- end -->"


def dotted(node: ast.expr) -> str | None:
    """``kdcore.engine.run`` for that chain of attributes on a name, else None."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = dotted(node.value)
        return None if base is None else f"{base}.{node.attr}"
    return None


def plugin_imports() -> set[tuple[str, str]]:
    """``(module, name)`` of every kdcore name the in-repo plugins' packages use: ``from
    kdcore.M import N``, ``import kdcore.M.N`` and ``kdcore.N`` read as an attribute (``name``
    may then be dotted, ``Loss.same_shape``). Their tests are left out: pip does not install them."""
    used: set[tuple[str, str]] = set()
    for path in sorted(ROOT.glob("plugins/*/kdcore_plugin_*/**/*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module is not None \
                    and node.module.split(".")[0] == "kdcore":
                used.update((node.module, alias.name) for alias in node.names)
            elif isinstance(node, ast.Import):
                used.update(tuple(alias.name.rsplit(".", 1)) for alias in node.names  # type: ignore[misc]
                            if alias.name.startswith("kdcore."))
            elif isinstance(node, ast.Attribute) and not isinstance(node.ctx, ast.Store):
                chain = dotted(node)
                if chain is not None and chain.startswith("kdcore."):
                    used.add(("kdcore", chain[len("kdcore."):]))
    return used


def resolve(module: str, name: str) -> Any:
    """What ``from MODULE import NAME`` (then ``.rest`` of a dotted name) gives, as Python does
    it: an attribute of the module, else its submodule."""
    found: Any = importlib.import_module(module)
    for part in name.split("."):
        if hasattr(found, part):
            found = getattr(found, part)
        else:
            found = importlib.import_module(f"{found.__name__}.{part}")
    return found


def beyond_all() -> dict[str, list[str]]:
    """The names :func:`plugin_imports` finds outside ``kdcore.__all__``, by module."""
    grouped: dict[str, list[str]] = defaultdict(list)
    for module, name in sorted(plugin_imports()):
        if module != "kdcore" or name.split(".")[0] not in kdcore.__all__:
            grouped[module].append(name)
    return dict(grouped)


def markdown() -> str:
    """The list docs/plugins.md shows between BEGIN and END."""
    lines = [f"- `{module}`: " + ", ".join(f"`{name}`" for name in names)
             for module, names in beyond_all().items()]
    return "\n".join([BEGIN, *lines, END])


def test_the_collector_sees_the_plugins_imports() -> None:
    """Guards the guard: a wrong glob or a missed import form would make the next test vacuous."""
    used = plugin_imports()
    assert {("kdcore.cli", "user_errors"), ("kdcore.engine.run", "pick_device"),
            ("kdcore.engine", "distributed"), ("kdcore", "hookimpl")} <= used
    assert len({module for module, _ in used}) > 10


def test_every_core_name_the_plugins_import_still_exists() -> None:
    missing = []
    for module, name in sorted(plugin_imports()):
        try:
            resolve(module, name)
        except (ImportError, AttributeError) as e:
            missing.append(f"{module}.{name} ({type(e).__name__}: {e})")
    assert not missing, ("kdcore's own plugins use these names, which kdcore keeps within a minor "
                         "series (docs/plugins.md, 'Names beyond kdcore.__all__'); restore them or "
                         "change the plugins first: " + "; ".join(missing))


def test_docs_list_exactly_these_names() -> None:
    shown = re.search(re.escape(BEGIN) + ".*?" + re.escape(END), DOC.read_text(), re.S)
    assert shown is not None, f"{DOC} lacks the list between {BEGIN} and {END}"
    assert shown.group(0) == markdown(), "run python tests/test_plugin_api.py and paste its output into " \
                                         "docs/plugins.md, 'Names beyond kdcore.__all__'"


if __name__ == "__main__":
    print(markdown())
