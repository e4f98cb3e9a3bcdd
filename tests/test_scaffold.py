"""`kdcore new-plugin`: the generated package installs, loads, passes its own contract tests and
works in `kdcore run`; bad names and existing folders are refused without touching anything."""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import sys
import unittest
from pathlib import Path

import pytest
from click.testing import CliRunner

import kdcore

from kdcore import scaffold
from kdcore.cli import main
from kdcore.plugins import Plugins
from kdcore.registry import components, own_plugins
from kdcore.scaffold import SCAFFOLD_KINDS
from kdcore.testing import install_dist_info, using_plugins

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

KINDS = scaffold.SCAFFOLD_KINDS
CONTRACT = {"loss": "LossContract", "connector": "ConnectorContract", "head": "HeadContract",
            "distiller": "DistillerContract", "algorithm": "AlgorithmContract",
            "model": "ModelContract", "dataset": "DatasetContract"}
FIXTURE_GOOD = Path(__file__).resolve().parent / "fixtures" / "plugins" / "good"


def name_for(kind: str) -> str:
    return f"zz-{kind}"


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One generated plugin per kind, via the CLI."""
    where = tmp_path_factory.mktemp("scaffold")
    out = {}
    for kind in SCAFFOLD_KINDS:
        result = CliRunner().invoke(main, ["new-plugin", name_for(kind), "--kind", kind, "--dir", str(where)])
        assert result.exit_code == 0, result.output
        out[kind] = where / f"kdcore-plugin-{name_for(kind)}"
        assert f"created {out[kind]}/" in result.stdout and f"pip install -e {out[kind]}" in result.stdout
    return out


@pytest.fixture(scope="module")
def site(generated: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every generated plugin installed by hand from its own pyproject.toml."""
    target = tmp_path_factory.mktemp("scaffold-site")
    for folder in generated.values():
        install_dist_info(str(folder), str(target))
    return target


@pytest.fixture
def on_path(site: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delenv("KDCORE_PLUGINS", raising=False)
    yield site
    for module in [m for m in sys.modules if m.startswith("kdcore_plugin_zz_")]:
        del sys.modules[module]


@pytest.mark.parametrize("kind", SCAFFOLD_KINDS)
def test_generated_package_layout(generated: dict[str, Path], kind: str) -> None:
    folder = generated[kind]
    ident = name_for(kind).replace("-", "_")
    package = f"kdcore_plugin_{ident}"
    with open(folder / "pyproject.toml", "rb") as f:
        project = tomllib.load(f)["project"]
    assert project["name"] == f"kdcore-plugin-{name_for(kind)}"
    assert project["dependencies"] == [f"kdcore{scaffold.kdcore_range()}"]
    assert project["entry-points"]["kdcore"] == {ident: f"{package}.plugin"}
    assert "*.egg-info/" in (folder / ".gitignore").read_text().splitlines()
    plugin_src = (folder / package / "plugin.py").read_text()
    tree = ast.parse(plugin_src)
    hooks = [f for f in tree.body if isinstance(f, ast.FunctionDef)
             and any(ast.unparse(d) == "kdcore.hookimpl" for d in f.decorator_list)]
    assert all(ast.get_docstring(hook) for hook in hooks)  # documented hooks
    expected_hook = "kdcore_losses" if kind == "loss" else f"kdcore_{kind}s"
    assert [hook.name for hook in hooks] == [expected_hook, "kdcore_presets"]
    assert "import torch" not in plugin_src  # the entry-point module stays light
    for path in folder.rglob("*.py"):
        ast.parse(path.read_text(), filename=str(path))
    test_src = (folder / "tests" / f"test_{folder.name.removeprefix('kdcore-plugin-').replace('-', '_')}_contract.py").read_text()
    assert f"testing.{CONTRACT[kind]}" in test_src and "testing.PluginContract" in test_src
    readme = (folder / "README.md").read_text()
    assert "pip install -e ." in readme and "python -m build" in readme and "twine upload" in readme


def test_generated_plugins_are_seen_by_kdcore(on_path: Path) -> None:
    loaded = Plugins()
    for kind in SCAFFOLD_KINDS:
        ident = name_for(kind).replace("-", "_")
        status = loaded.status[ident]
        assert (status.state, status.distribution, status.requires_kdcore) == (
            "ok", f"kdcore-plugin-{name_for(kind)}", scaffold.kdcore_range()), status
        assert f"{ident}:{ident}" in {r.id for r in components(kind, loaded)}
        assert f"{ident}:{ident}" in {r.id for r in components("preset", loaded)}


def run_test_classes(path: Path) -> tuple[int, int, list[str]]:
    """Run the ``Test*`` classes of a test file as pytest would (xunit ``setup_method``, a
    :class:`unittest.SkipTest` is a skip), in-process: (passed, skipped, failures)."""
    spec = importlib.util.spec_from_file_location(f"generated_{path.parent.parent.name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    passed, skipped, failures = 0, 0, []
    for cls in [v for k, v in vars(module).items() if k.startswith("Test") and isinstance(v, type)]:
        for name in sorted(n for n in dir(cls) if n.startswith("test_")):
            instance = cls()
            method = getattr(instance, name)
            try:
                instance.setup_method(method)
                try:
                    method()
                finally:
                    instance.teardown_method(method)
                passed += 1
            except (unittest.SkipTest, pytest.skip.Exception):
                skipped += 1
            except Exception as exc:  # noqa: BLE001 - collect every failure for the message
                failures.append(f"{cls.__name__}.{name}: {type(exc).__name__}: {exc}")
    return passed, skipped, failures


@pytest.mark.parametrize("kind", SCAFFOLD_KINDS)
def test_generated_contract_tests_pass(generated: dict[str, Path], on_path: Path, kind: str) -> None:
    """The author's first `pytest` after `pip install -e .`: the generated tests pass."""
    with using_plugins(None):
        passed, skipped, failures = run_test_classes(next((generated[kind] / "tests").glob("test_*_contract.py")))
    assert not failures, "\n".join(failures)
    assert passed >= 15 and skipped <= 4, (passed, skipped)


@pytest.mark.e2e
@pytest.mark.fashion
def test_generated_loss_works_in_kdcore_run(generated: dict[str, Path], on_path: Path, tmp_path: Path,
                                            tiny: list[str]) -> None:
    overrides = [arg for item in [*tiny, "trainer.cpu_tuning=false"] for arg in ("--set", item)]
    with using_plugins(None):  # the preset by name, as the generated README says
        result = CliRunner().invoke(main, ["run", "--preset", "zz_loss", *overrides,
                                           "--output-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    run_dir = Path(result.stdout.strip().splitlines()[-1].removeprefix("run dir: "))
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["train"]["zz_loss"] > 0  # the generated loss was a term of the training loss
    assert json.loads((run_dir / "summary.json").read_text())["epochs"] == 1


def test_generated_algorithm_ships_a_default_preset(on_path: Path) -> None:
    from kdcore.cli import preset_path, resolve_config

    with using_plugins(None):
        path = preset_path("zz_algorithm")
        config, _ = resolve_config("zz_algorithm", None, (), None, None)
    assert path and os.path.isfile(path)
    assert config.algorithm.type == "zz_algorithm"
    assert config.algorithm.params == {"temperature": 4.0, "alpha": 0.5}


@pytest.mark.parametrize("kind", SCAFFOLD_KINDS)
def test_presets_keep_the_default_teacher(generated: dict[str, Path], kind: str) -> None:
    """Presets copy the core job's teacher block, so every run shares one cached teacher."""
    import yaml

    from kdcore.config import load_config

    presets = generated[kind] / f"kdcore_plugin_zz_{kind}" / "presets"
    preset = presets / scaffold.Names(name_for(kind), kind).preset_file
    data = yaml.safe_load(preset.read_text())
    core = yaml.safe_load((Path(scaffold.__file__).parent / "presets" / "teacher_student.yaml").read_text())
    load_config(data, [])  # the structure is a valid run config
    for teacher in data["teachers"]:
        assert {k: teacher[k] for k in ("name", "type", "checkpoint", "train")} == \
            {k: core["teachers"][0][k] for k in ("name", "type", "checkpoint", "train")}
    if data["teachers"]:
        assert (data["data"], data["student"], data["optimizer"], data["schedule"], data["trainer"]) == \
            (core["data"], core["student"], core["optimizer"], core["schedule"], core["trainer"])


# --- refusals ----------------------------------------------------------------------------------

def test_refuses_to_overwrite_an_existing_folder(tmp_path: Path) -> None:
    existing = tmp_path / "kdcore-plugin-mine"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    result = CliRunner().invoke(main, ["new-plugin", "mine", "--dir", str(tmp_path)])
    assert result.exit_code == 2
    assert result.stderr.startswith("kdcore: error: ") and "already exists" in result.stderr
    assert "Traceback" not in result.output
    assert sorted(p.name for p in existing.iterdir()) == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kdcore-plugin-mine"]  # no staging left


@pytest.mark.parametrize("name, message", [
    ("My-Plugin", "lower-case letters"),
    ("1st", "starting with a letter"),
    ("a--b", "lower-case letters"),
    ("trailing-", "lower-case letters"),
    ("two words", "lower-case letters"),
    ("x" * 41, "at most 40"),
    ("kdcore-plugin-foo", "'kdcore new-plugin foo' creates kdcore-plugin-foo"),
    ("class", "Python keyword"),
])
def test_rejects_bad_names(tmp_path: Path, name: str, message: str) -> None:
    result = CliRunner().invoke(main, ["new-plugin", name, "--dir", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert message in result.stderr and f"NAME {name!r}" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_rejects_a_builtin_component_name(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["new-plugin", "linear", "--kind", "connector", "--dir", str(tmp_path)])
    assert result.exit_code == 2 and "built-in connector 'linear'" in result.stderr
    ok = CliRunner().invoke(main, ["new-plugin", "linear", "--kind", "loss", "--dir", str(tmp_path)])
    assert ok.exit_code == 0, ok.output  # no built-in loss is called linear


def test_rejects_the_name_of_an_installed_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site = tmp_path / "site"
    install_dist_info(str(FIXTURE_GOOD), str(site))
    monkeypatch.syspath_prepend(str(site))
    result = CliRunner().invoke(main, ["new-plugin", "fix_good", "--dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "a plugin named 'fix_good' is already installed (kdcore-fixture-good)" in result.stderr


def test_rejects_an_unknown_kind(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["new-plugin", "mine", "--kind", "optimizer", "--dir", str(tmp_path)])
    assert result.exit_code == 2 and "optimizer" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_failed_write_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_plan(names: scaffold.Names) -> dict[str, str]:
        return {"pyproject.toml": "x", "pkg/\0bad.py": "y"}  # the second path cannot be created

    monkeypatch.setattr(scaffold, "plan", broken_plan)
    with pytest.raises(ValueError):
        scaffold.new_plugin("mine", "loss", str(tmp_path))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("version, expected", [("0.1.0", ">=0.1.0,<0.2"), ("0.12.3", ">=0.12.3,<0.13"),
                                               ("1.4.2", ">=1.4.2,<2"), ("2.0.0rc1", ">=2.0.0,<3")])
def test_declared_kdcore_range(version: str, expected: str) -> None:
    assert scaffold.kdcore_range(version) == expected


# --- several components, and the layout kdcore's own plugins share -------------------------------

def test_several_components_in_one_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result = CliRunner().invoke(main, ["new-plugin", "myteam", "--kind", "loss", "--component", "sp",
                                       "--component", "pkt", "--dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "losses named 'sp', 'pkt'" in result.stdout
    folder = tmp_path / "kdcore-plugin-myteam"
    names = scaffold.Names("myteam", "loss", ("sp", "pkt"))
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) == \
        sorted(scaffold.layout(names))
    site = tmp_path / "site"
    install_dist_info(str(folder), str(site))
    monkeypatch.syspath_prepend(str(site))
    loaded = Plugins()
    assert {"myteam:sp", "myteam:pkt"} <= {r.id for r in components("loss", loaded)}
    assert "myteam:myteam" in {r.id for r in components("preset", loaded)}
    with using_plugins(None):
        passed, skipped, failures = run_test_classes(folder / "tests" / "test_myteam_contract.py")
    assert not failures, "\n".join(failures)
    assert passed >= 30, passed  # both losses' contracts ran
    for module in [m for m in sys.modules if m.startswith("kdcore_plugin_myteam")]:
        del sys.modules[module]


def test_component_names_are_checked(tmp_path: Path) -> None:
    bad = CliRunner().invoke(main, ["new-plugin", "mine", "--component", "Bad-Name", "--dir", str(tmp_path)])
    assert bad.exit_code == 2 and "--component 'Bad-Name'" in bad.stderr
    twice = CliRunner().invoke(main, ["new-plugin", "mine", "--component", "a", "--component", "a",
                                      "--dir", str(tmp_path)])
    assert twice.exit_code == 2 and "names one component twice" in twice.stderr
    builtin = CliRunner().invoke(main, ["new-plugin", "mine", "--component", "kd", "--dir", str(tmp_path)])
    assert builtin.exit_code == 2 and "--component 'kd': kdcore has a built-in loss 'kd'" in builtin.stderr
    assert list(tmp_path.iterdir()) == []


ROOT = Path(scaffold.__file__).parents[1]


@pytest.mark.parametrize("short", own_plugins())
def test_in_repo_plugins_follow_the_scaffold_layout(short: str) -> None:
    """Every plugin of this repository (those kdcore's install hints name) has the files
    `kdcore new-plugin` writes, where it writes them, and registers its presets; more modules,
    presets and tests beside them are fine. A preset is named after its data set."""
    import yaml

    folder = ROOT / "plugins" / f"kdcore-plugin-{short}"
    names = scaffold.Names(short, "loss")
    loaded = Plugins()
    mine = [r for kind in kdcore.KINDS for r in components(kind, loaded) if r.plugin == names.plugin]
    kinds = {r.kind for r in mine} & set(SCAFFOLD_KINDS)
    if not kinds and not any(r.kind == "preset" for r in mine):
        pytest.skip(f"{folder.name} has no component of a kind 'kdcore new-plugin' writes")
    required = {path for kind in kinds or {"loss"} for path in scaffold.layout(scaffold.Names(short, kind))
                if "/presets/" not in path and (kinds or not path.endswith("/losses.py"))}
    missing = sorted(path for path in required if not (folder / path).is_file())
    assert not missing, f"{folder.name} lacks {missing} (kdcore/scaffold.py: layout)"
    presets = [r for r in mine if r.kind == "preset"]
    assert [r.component.name for r in presets][:1] == [names.plugin], f"{folder.name}: no preset {short!r}"
    for preset in presets:
        path = Path(preset.component.resolve())
        data = yaml.safe_load(path.read_text())
        assert path.parent == folder / names.package / "presets"
        assert path.name == f"{data['data']['type']}.yaml", f"{path} runs on {data['data']['type']}"
    plugin_src = (folder / names.package / "plugin.py").read_text()
    assert "import torch" not in plugin_src  # the entry-point module stays light
    with open(folder / "pyproject.toml", "rb") as f:
        project = tomllib.load(f)
    assert project["project"]["entry-points"]["kdcore"] == {names.plugin: f"{names.package}.plugin"}
    assert "presets/*.yaml" in project["tool"]["setuptools"]["package-data"][names.package]
