"""The boundary between kdcore and this plugin: the core never imports it, and a config that
names one of its components where it is not loaded stops with one line that names
kdcore-plugin-dense (how to install it, or why the installed one was left out)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import kdcore
from kdcore.cli import main
from kdcore.testing import isolated_plugins, using_plugins

CORE = Path(kdcore.__file__).parent


def _plugin_references(path: Path) -> list[str]:
    """Imports of the plugin in ``path`` (at any depth), and "module:attr" factory strings into it."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append(node.module or "")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            found.append(node.value.split(":")[0])
    return [name for name in found if name.split(".")[0] == "kdcore_plugin_dense"]


def test_the_core_never_imports_the_plugin() -> None:
    users = {str(p.relative_to(CORE)): _plugin_references(p) for p in CORE.rglob("*.py")}
    assert {path: refs for path, refs in users.items() if refs} == {}
    own = Path(__file__).parents[1] / "kdcore_plugin_dense" / "plugin.py"
    assert _plugin_references(own)  # the check does find the plugin's own factory strings


@pytest.mark.parametrize("item, where", [
    ("data.type=fashion_scenes", "data: unknown dataset 'fashion_scenes'"),
    ("student.type=seg_teacher", "student: unknown model 'seg_teacher'"),
    ("student.type=yolo_student", "student: unknown model 'yolo_student'"),
])
def test_a_dense_name_without_the_plugin_says_how_to_install_it(item: str, where: str) -> None:
    with using_plugins(isolated_plugins()):  # the core alone, as if the plugin were not installed
        result = CliRunner().invoke(main, ["run", "--set", item, "--print-config"])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and where in lines[0], result.stderr
    assert "it is provided by kdcore-plugin-dense: pip install kdcore-plugin-dense" in lines[0]


def test_an_empty_kdcore_plugins_loads_no_third_party_plugin_and_says_so() -> None:
    env = {**os.environ, "KDCORE_PLUGINS": ""}
    proc = subprocess.run([sys.executable, "-m", "kdcore.cli", "run", "--set", "data.type=fashion_scenes",
                           "--print-config"], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "kdcore: error: data: unknown dataset 'fashion_scenes' (did you mean 'fashion_mnist'?); it comes "
        "from plugin 'dense' (kdcore-plugin-dense), which KDCORE_PLUGINS='' leaves out (see 'kdcore list "
        "dataset')"]
