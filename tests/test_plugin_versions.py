"""Versions a plugin states: its own ``__version__`` (from the installed metadata, so it cannot
drift from pyproject.toml; kdcore's pyproject.toml reads kdcore/version.py's instead), the kdcore
range it requires (parsed by ``packaging``) and the plugin API it was written for
(``KDCORE_PLUGIN_API``, checked against ``kdcore.PLUGIN_API_VERSION``)."""

from __future__ import annotations

import importlib
import importlib.metadata
import tomllib
from pathlib import Path

import pytest

import kdcore
from kdcore.plugins import Plugins
from kdcore.registry import components
from kdcore.version import version_in_range

ROOT = Path(__file__).resolve().parents[1]
PROJECTS = [ROOT / "pyproject.toml", *sorted(ROOT.glob("plugins/*/pyproject.toml"))]


@pytest.mark.parametrize("project", PROJECTS, ids=lambda p: "kdcore" if p.parent == ROOT else p.parent.name)
def test_version_is_the_pyproject_version(project: Path) -> None:
    """kdcore's and every in-repo plugin's ``__version__``."""
    toml = tomllib.loads(project.read_text(encoding="utf-8"))
    meta = toml["project"]
    module = importlib.import_module(meta["name"].replace("-", "_"))
    if project.parent == ROOT:  # the literal in kdcore/version.py, which pyproject.toml reads
        assert meta["dynamic"] == ["version"] and "version" not in meta
        assert toml["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "kdcore.version.__version__"}
        stated = importlib.metadata.version("kdcore")  # as pip installed it from that literal
    else:
        stated = meta["version"]
    assert module.__version__ == stated, (
        f"{meta['name']}: __version__ {module.__version__!r} but pyproject.toml says "
        f"{stated!r} (reinstall it: pip install --no-deps -e {project.parent})")


@pytest.mark.parametrize(("version", "spec", "fits"), [
    ("0.1.7", ">=0.1,<0.2", True), ("0.1.7", "<0.2,>=0.1.8", False), ("0.2.0rc1", ">=0.1,<0.3", True),
    ("0.1.10", ">0.1.9", True), ("0.1.7", "", True), ("1.0", "==1.0.0", True)])
def test_version_in_range_follows_pep_440(version: str, spec: str, fits: bool) -> None:
    assert version_in_range(version, spec) is fits  # 0.1.10 > 0.1.9: numeric, not text


def _install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, body: str,
             requires: str = "") -> None:
    """A one-module plugin ``fix_NAME`` (distribution ``kdcore-fixture-NAME``) on sys.path."""
    tmp_path = tmp_path / name
    package = tmp_path / f"kdfix_{name}"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "plugin.py").write_text("import kdcore\n" + body + "\n@kdcore.hookimpl\n"
                                       f"def kdcore_losses():\n    return [kdcore.Component("
                                       f"'{name}_loss', 'torch.nn:L1Loss', 'a loss')]\n")
    info = tmp_path / f"kdcore_fixture_{name}-1.0.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: kdcore-fixture-{name}\n"
                                   f"Version: 1.0.0\n{requires}")
    (info / "entry_points.txt").write_text(f"[kdcore]\nfix_{name} = kdfix_{name}.plugin\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("KDCORE_PLUGINS", raising=False)


def test_a_plugin_for_a_newer_plugin_api_is_refused_by_name_alone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    newer = kdcore.PLUGIN_API_VERSION + 1
    _install(tmp_path, monkeypatch, "nextapi", f"KDCORE_PLUGIN_API = {newer}")
    _install(tmp_path, monkeypatch, "sameapi", f"KDCORE_PLUGIN_API = {kdcore.PLUGIN_API_VERSION}")
    loaded = Plugins()
    status = loaded.status["fix_nextapi"]
    assert status.state == "incompatible"
    assert status.line() == (
        f"kdcore: plugin 'fix_nextapi' (kdcore-fixture-nextapi 1.0.0) incompatible: needs kdcore "
        f"plugin API {newer}, kdcore {kdcore.__version__} has plugin API {kdcore.PLUGIN_API_VERSION}; "
        f"upgrade kdcore, or install a release of the plugin made for plugin API "
        f"{kdcore.PLUGIN_API_VERSION}")
    assert loaded.pm.get_plugin("fix_nextapi") is None
    names = {r.component.name for r in components("loss", loaded)}
    assert "nextapi_loss" not in names and "sameapi_loss" in names  # the others still load
    assert loaded.status["fix_sameapi"].state == "ok"
    assert loaded.status["kd"].state == "ok"


def test_a_plugin_api_that_is_not_an_integer_fails_that_plugin(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _install(tmp_path, monkeypatch, "textapi", 'KDCORE_PLUGIN_API = "2"')
    status = Plugins().status["fix_textapi"]
    assert status.state == "failed"
    assert status.error.startswith("declares KDCORE_PLUGIN_API = '2'; write the plugin API version")


@pytest.mark.parametrize(("requires", "declared"), [
    ("Requires-Dist: kdcore[export]>=0.1,<0.2\n", ">=0.1,<0.2"),
    ("Requires-Dist: KDCore (>=0.1) ; python_version >= '3'\n", ">=0.1"),
    ("Requires-Dist: kdcore-plugin-kd>=0.1\nRequires-Dist: kdcore>=0.1\n", ">=0.1"),
    ("Requires-Dist: torch>=2\n", "")])
def test_the_declared_range_is_read_with_packaging(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   requires: str, declared: str) -> None:
    _install(tmp_path, monkeypatch, "ranged", "", requires)
    status = Plugins().status["fix_ranged"]
    assert (status.state, status.requires_kdcore) == ("ok", declared)
