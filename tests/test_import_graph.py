"""The core's import graph: ``import kdcore`` loads no engine module (the package root imports
nothing above the components it exports), and module-level imports inside kdcore form no cycle.
Imports inside functions are lazy by intent and left out."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "kdcore"


def test_import_kdcore_leaves_the_engine_out() -> None:
    code = ("import sys, kdcore; print(' '.join(sorted(m for m in sys.modules if m.startswith('kdcore'))));"
            "kdcore.gather_rows, kdcore.mean_across_ranks; print('kdcore.engine.distributed' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         timeout=120).stdout.splitlines()
    assert not [m for m in out[0].split() if m.startswith("kdcore.engine")], out[0]
    assert out[1] == "True"  # the DDP helpers plugins call still resolve, on first use


def _module(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """kdcore modules that ``path`` imports at module level (``from . import x``: the module x)."""
    name = _module(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        for sub in ast.walk(node) if isinstance(node, (ast.If, ast.Try)) else [node]:
            if isinstance(sub, ast.Import):
                found |= {alias.name for alias in sub.names}
            elif isinstance(sub, ast.ImportFrom):
                base = sub.module or ""
                if sub.level:
                    up = package.split(".")[: len(package.split(".")) - sub.level + 1]
                    base = ".".join(up + ([sub.module] if sub.module else []))
                found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in sub.names}
    return {m for m in found if m in modules and m != name}


def test_no_import_cycles_in_kdcore() -> None:
    paths = {_module(p): p for p in PACKAGE.rglob("*.py")}
    graph = {name: _imports(path, set(paths)) for name, path in paths.items()}
    done: set[str] = set()

    def visit(name: str, trail: list[str]) -> None:
        if name in trail:
            raise AssertionError("import cycle: " + " -> ".join(trail[trail.index(name):] + [name]))
        if name not in done:
            for target in sorted(graph[name]):
                visit(target, trail + [name])
            done.add(name)

    for name in sorted(graph):
        visit(name, [])
