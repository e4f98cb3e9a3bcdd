"""Plugin loading as users meet it: broken, misspelled and incompatible plugins are reported in
one line and skipped while everything else keeps working; KDCORE_PLUGINS; `kdcore plugins`;
name clashes; and a third-party plugin (examples/third-party-plugin) installed with pip and
used in a real `kdcore run`.

Fixture plugins (tests/fixtures/plugins/) are "installed" by writing their dist-info into a temp
directory put on sys.path or PYTHONPATH, never into the environment.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import unittest
from pathlib import Path
from typing import Any, Literal, Optional, Union

import pytest
from click.testing import CliRunner

import kdcore
from kdcore.cli import main
from kdcore.plugins import Plugins
from kdcore.registry import components, lookup
from kdcore.testing import install_dist_info, isolated_plugins, using_plugins

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "plugins"
EXAMPLE = ROOT / "examples" / "third-party-plugin"
CASES = ("good", "other", "broken", "misspelled", "incompatible", "pinned", "newapi")
FIXTURE_PACKAGES = ("kdfix_",)
ROW_FIELDS = {"name", "distribution", "version", "state", "requires_kdcore", "error", "warnings",
              "components"}


def kdcore_command() -> list[str]:
    exe = shutil.which("kdcore") or os.path.join(os.path.dirname(sys.executable), "kdcore")
    return [exe] if os.path.exists(exe) else [sys.executable, "-m", "kdcore"]


def forget_fixture_modules() -> None:
    for name in [m for m in sys.modules if m.startswith(FIXTURE_PACKAGES)]:
        del sys.modules[name]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding every fixture plugin, installed by hand (dist-info + package)."""
    target = tmp_path_factory.mktemp("fixture-site")
    for case in CASES:
        install_dist_info(str(FIXTURES / case), str(target))
    return target


@pytest.fixture
def on_path(site: Path, monkeypatch: pytest.MonkeyPatch):
    """The fixture plugins visible in-process; a fresh process-wide plugin set afterwards."""
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delenv("KDCORE_PLUGINS", raising=False)
    forget_fixture_modules()
    with using_plugins(None):
        yield site
    forget_fixture_modules()


def run_cli(args: list[str]) -> tuple[int, str, str]:
    """``kdcore ARGS`` in-process, on a plugin set rebuilt from what is on sys.path."""
    with using_plugins(None):
        result = CliRunner().invoke(main, args)
    return result.exit_code, result.stdout, result.stderr


# --- a real process: failures reported once, one line each, the rest keeps working --------------

def test_broken_plugins_are_one_line_each_and_the_rest_works(site: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    env.pop("KDCORE_PLUGINS", None)
    proc = subprocess.run([*kdcore_command(), "list", "loss"], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    listed = {line.split()[0] for line in proc.stdout.splitlines() if line.strip()}
    assert {"fix_good:fix_l1", "fix_good:twin", "fix_other:twin", "kdcore:kd"} <= listed
    assert not {"fix_future:future_loss", "fix_pinned:pinned_loss", "fix_typo:typo_loss"} & listed
    lines = proc.stderr.strip().splitlines()
    by_plugin = {name: [line for line in lines if f"'{name}'" in line]
                 for name in ("fix_broken", "fix_typo", "fix_future", "fix_pinned")}
    assert all(len(found) == 1 for found in by_plugin.values()), proc.stderr
    assert by_plugin["fix_broken"][0].startswith(
        "kdcore: plugin 'fix_broken' (kdcore-fixture-broken 0.0.1) failed: import failed: "
        "ModuleNotFoundError: No module named 'kdcore_fixture_missing_dependency' (at ")
    assert by_plugin["fix_broken"][0].endswith(os.path.join("kdfix_broken", "plugin.py") + ":3)")
    assert "Traceback" not in proc.stderr


# --- in-process: the loader's decisions -----------------------------------------------------------

def test_unknown_hook_is_reported_with_did_you_mean(on_path: Path) -> None:
    status = Plugins().status["fix_typo"]
    assert status.state == "failed"
    assert status.distribution == "kdcore-fixture-misspelled" and status.version == "2.0.0"
    assert "'kdcore_loses' matches no kdcore hookspec (did you mean 'kdcore_losses'?)" in status.error


def test_incompatible_plugin_is_skipped_whole_and_shows_both_versions(on_path: Path) -> None:
    loaded = Plugins()
    status = loaded.status["fix_future"]
    assert status.state == "incompatible"
    assert status.requires_kdcore == ">=0.2,<0.3"
    assert f"needs kdcore >=0.2,<0.3, this is kdcore {kdcore.__version__}" in status.error
    assert loaded.pm.get_plugin("fix_future") is None  # not half-loaded: no hook registered
    assert "kdfix_future.plugin" not in sys.modules  # the metadata range is checked before import
    assert "future_loss" not in {r.component.name for r in components("loss", loaded)}
    assert "future_model" not in {r.component.name for r in components("model", loaded)}

    code, out, err = run_cli(["plugins"])
    assert code == 0
    row = [line for line in out.splitlines() if line.startswith("fix_future ")]
    assert row == ["fix_future  (kdcore-fixture-incompatible 9.0.0)  incompatible  "
                   "requires kdcore >=0.2,<0.3"]
    assert f"error: needs kdcore >=0.2,<0.3, this is kdcore {kdcore.__version__}; upgrade one of them" in out
    assert "future_loss" not in out


def test_incompatible_range_is_reported_even_when_the_import_would_fail(on_path: Path) -> None:
    """A plugin built on a newer kdcore's API fails to import here; its metadata range is
    checked first, so users read 'incompatible' with both versions, not an ImportError."""
    status = Plugins().status["fix_newapi"]
    assert status.state == "incompatible", status.error
    assert f"needs kdcore >=0.2,<0.3, this is kdcore {kdcore.__version__}" in status.error
    assert "kdfix_newapi.plugin" not in sys.modules


def test_module_level_kdcore_requires_wins_over_metadata(on_path: Path) -> None:
    status = Plugins().status["fix_pinned"]
    assert (status.state, status.requires_kdcore) == ("incompatible", "==0.0.9")


def test_kdcore_plugins_env_restricts_loading(on_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KDCORE_PLUGINS", "fix_good, kdcore-plugin-kd")  # entry-point or dist name
    loaded = Plugins()
    states = {name: s.state for name, s in loaded.status.items()}
    assert states["fix_good"] == "ok" and states["kd"] == "ok"
    others = ("fix_other", "fix_typo", "fix_future", "fix_broken", "fix_newapi")
    assert {states[n] for n in others} == {"disabled"}
    assert "kdfix_typo.plugin" not in sys.modules  # a disabled plugin is never imported
    assert {r.id for r in components("loss", loaded)} == {"fix_good:fix_l1", "fix_good:twin", "kdcore:kd"}
    assert {r.id for r in components("preset", loaded)} >= {"kd:kd"}

    monkeypatch.setenv("KDCORE_PLUGINS", "")
    loaded = Plugins()
    assert {s.state for s in loaded.status.values()} == {"disabled"}
    assert [r.id for r in components("loss", loaded)] == ["kdcore:kd"]  # built-ins stay
    assert {r.id for r in components("connector", loaded)} >= {"kdcore:linear"}  # built-ins stay


def test_plugins_json_fields(on_path: Path) -> None:
    code, out, _ = run_cli(["plugins", "--json"])
    assert code == 0
    rows = {row["name"]: row for row in json.loads(out)}
    assert rows["kdcore"]["state"] == "ok" and rows["kdcore"]["version"] == kdcore.__version__
    assert "linear" in rows["kdcore"]["components"]["connector"]
    for name in ("fix_good", "fix_broken", "fix_future", "kd"):
        assert set(rows[name]) == ROW_FIELDS, name
    assert rows["fix_good"] == {
        "name": "fix_good", "distribution": "kdcore-fixture-good", "version": "1.2.3", "state": "ok",
        "requires_kdcore": ">=0.1,<0.2", "error": "", "warnings": [],
        "components": {"loss": ["fix_l1", "twin"]}}
    assert rows["fix_broken"]["state"] == "failed" and rows["fix_broken"]["components"] == {}
    assert rows["fix_broken"]["error"].startswith("import failed: ModuleNotFoundError")
    assert rows["fix_future"]["state"] == "incompatible"
    assert rows["fix_future"]["requires_kdcore"] == ">=0.2,<0.3"


def test_a_clashing_short_name_stays_with_the_first_installed(on_path: Path) -> None:
    loaded = Plugins()
    assert loaded.precedence("fix_good") < loaded.precedence("fix_other")  # installed first
    assert lookup("loss", "twin", loaded).id == "fix_good:twin"
    assert lookup("loss", "fix_other:twin", loaded).plugin == "fix_other"
    assert loaded.status["fix_other"].warnings == [
        "loss 'twin' is also provided by fix_good:twin, which keeps the short name; this "
        "plugin's is reachable as fix_other:twin"]
    assert not loaded.status["fix_good"].warnings

    code, out, err = run_cli(["plugins", "--strict"])
    troubled = err.split("problems:")[1]
    assert code == 1 and "fix_other" in troubled and "fix_good" not in troubled
    assert "warning: loss 'twin' is also provided by fix_good:twin" in out
    assert lookup("loss", "fix_l1", loaded).id == "fix_good:fix_l1"  # unique names need no prefix


def test_two_distributions_claiming_one_plugin_name(on_path: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    info = tmp_path / "kdcore_fixture_dup-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: kdcore-fixture-dup\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text("[kdcore]\nfix_good = kdfix_other.plugin\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    loaded = Plugins()
    claimed = [s for s in loaded.status.values() if s.name == "fix_good"]
    assert sorted(s.state for s in claimed) == ["failed", "ok"]
    loser = next(s for s in claimed if s.state == "failed")
    assert "is also claimed by" in loser.error and "skipped" in loser.error


def test_a_hook_that_raises_is_a_warning_of_that_plugin() -> None:
    import types

    module = types.ModuleType("raising_plugin")

    @kdcore.hookimpl
    def kdcore_losses():
        raise RuntimeError("boom")

    module.kdcore_losses = kdcore_losses
    with using_plugins(isolated_plugins(raiser=module)):
        result = CliRunner().invoke(main, ["plugins"])
        listing = CliRunner().invoke(main, ["list", "connector"])
    assert result.exit_code == 0
    assert "warning: kdcore_losses() raised RuntimeError: boom" in result.stdout
    assert listing.exit_code == 0 and "kdcore:linear" in listing.stdout


def _hook_module(name: str, returns: object):
    import types

    module = types.ModuleType(name)

    @kdcore.hookimpl
    def kdcore_losses():
        return returns

    module.kdcore_losses = kdcore_losses
    return module


@pytest.mark.parametrize("returns, says", [
    (kdcore.Component("solo", "x:y", "one loss, not in a list"),
     "kdcore_losses() must return a list of kdcore.Component, got Component; its losses are skipped"),
    (42, "kdcore_losses() must return a list of kdcore.Component, got int"),
    (None, "kdcore_losses() must return a list of kdcore.Component, got NoneType"),
    ("cosine", "kdcore_losses() must return a list of kdcore.Component, got str"),
    (["cosine"], "kdcore_losses() returned 'cosine' (str), not a kdcore.Component; skipped"),
])
def test_a_hook_returning_the_wrong_type_is_a_warning_and_the_rest_works(returns, says) -> None:
    """Seen in an audit: one Component instead of a list crashed every command."""
    with using_plugins(isolated_plugins(wrong=_hook_module("wrong_plugin", returns))):
        listing = CliRunner().invoke(main, ["plugins"])
        losses = CliRunner().invoke(main, ["list", "loss"])
    assert listing.exit_code == 0, listing.output
    assert f"warning: {says}" in listing.stdout
    assert losses.exit_code == 0 and losses.stdout.split()[0] == "kdcore:kd"  # none of it, no crash
    assert len(losses.stdout.splitlines()) == 1


def test_plugins_strict_fails_ci_on_any_problem() -> None:
    with using_plugins(isolated_plugins(wrong=_hook_module("wrong_plugin", 42))):
        strict = CliRunner().invoke(main, ["plugins", "--strict"])
        as_json = CliRunner().invoke(main, ["plugins", "--json", "--strict"])
    assert strict.exit_code == 1 and as_json.exit_code == 1
    assert "kdcore: --strict: 1 plugin(s) with problems: wrong" in strict.stderr
    with using_plugins(isolated_plugins()):
        assert CliRunner().invoke(main, ["plugins", "--strict"]).exit_code == 0


def test_hooks_are_called_once_per_plugin_set() -> None:
    calls = []
    module = _hook_module("counting_plugin", [])
    module.kdcore_losses = kdcore.hookimpl(lambda: calls.append(1) or [])
    loaded = isolated_plugins(counting=module)
    for _ in range(3):
        components("loss", loaded)
    assert len(calls) == 1


def test_components_follow_registration_and_warnings_do_not_repeat() -> None:
    loaded = isolated_plugins(wrong=_hook_module("wrong_plugin", 42))
    components("loss", loaded)
    loaded.register(_hook_module("good_plugin", [kdcore.Component("fresh", lambda: None, "new")]), "good")
    assert [r.id for r in components("loss", loaded)] == ["good:fresh", "kdcore:kd"]
    loaded.pm.register(_hook_module("direct", [kdcore.Component("direct", lambda: None, "x")]), name="direct")
    assert [r.id for r in components("loss", loaded)] == ["direct:direct", "good:fresh", "kdcore:kd"]
    loaded.unregister("good")
    assert [r.id for r in components("loss", loaded)] == ["direct:direct", "kdcore:kd"]
    assert len(loaded.status["wrong"].warnings) == 1


def test_warnings_are_printed_once_as_found_by_the_process_wide_set(capsys) -> None:
    loaded = isolated_plugins(wrong=_hook_module("wrong_plugin", 42))
    loaded.echo = True
    components("loss", loaded)
    components("loss", loaded)
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["kdcore: plugin 'wrong' (<in-process>) warning: kdcore_losses() must return a "
                   "list of kdcore.Component, got int; its losses are skipped"]


def test_malformed_kdcore_range_fails_that_plugin_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "kdfix_badrange"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "plugin.py").write_text('import kdcore\nKDCORE_REQUIRES = "0.2"\n'
                                       "@kdcore.hookimpl\ndef kdcore_losses():\n    return []\n")
    info = tmp_path / "kdcore_fixture_badrange-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: kdcore-fixture-badrange\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text("[kdcore]\nfix_badrange = kdfix_badrange.plugin\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("KDCORE_PLUGINS", raising=False)
    loaded = Plugins()
    status = loaded.status["fix_badrange"]
    assert status.state == "failed"
    assert "declares an invalid kdcore range '0.2'" in status.error and "'>=0.1,<0.2'" in status.error
    assert loaded.status["kd"].state == "ok"
    assert "kd:kd" in {r.id for r in components("preset", loaded)}


def test_kdcore_plugins_typo_is_named_and_the_missing_loss_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KDCORE_PLUGINS", "kdd")
    loaded = Plugins()
    assert loaded.unmatched_selection() == [
        "kdcore: KDCORE_PLUGINS names 'kdd', which matches no installed plugin (did you mean 'kd'?)"]
    assert lookup("loss", "kd", loaded).id == "kdcore:kd"  # the core's own
    with pytest.raises(kdcore.UserError) as err:
        lookup("preset", "kd", loaded)
    assert ("it comes from plugin 'kd' (kdcore-plugin-kd), which KDCORE_PLUGINS='kdd' leaves out"
            in str(err.value))
    assert "pip install" not in str(err.value)


def test_a_broken_factory_is_one_line_naming_the_plugin() -> None:
    import types

    module = types.ModuleType("lazy_plugin")

    @kdcore.hookimpl
    def kdcore_losses():
        return [kdcore.Component("gone", "kdfix_not_a_module:Loss", "factory that does not import"),
                kdcore.Component("number", lambda: 1.5, "factory that builds no module")]

    module.kdcore_losses = kdcore_losses
    loaded = isolated_plugins(lazy=module)
    with pytest.raises(kdcore.UserError) as err:
        kdcore.build("loss", "gone", plugins=loaded, where="teachers[0].distill[0].head.losses[0]")
    assert str(err.value).startswith("teachers[0].distill[0].head.losses[0]: loss 'lazy:gone' cannot be "
                                     "loaded: its factory 'kdfix_not_a_module:Loss' failed with "
                                     "ModuleNotFoundError")
    assert "plugin 'lazy' is broken" in str(err.value)
    with pytest.raises(kdcore.UserError, match="loss 'lazy:number' built a float, not a torch.nn.Module"):
        kdcore.build("loss", "number", plugins=loaded)


def _loose(a: Union[float, str] = 1.0, b: Optional[Union[int, str]] = 1,
           c: float | Literal["auto"] = 1.0, d=0, e: Any = 1.0) -> None:
    """Numeric defaults whose annotations allow text (or say nothing)."""


def _strict(t: float = 4.0, n: Optional[int] = 1, flag: bool = False) -> None:
    """Numeric defaults whose annotations allow no text."""


def test_text_is_refused_only_where_the_annotation_allows_no_text() -> None:
    from kdcore.registry import _check_scalar

    for key in "abcde":
        _check_scalar(_loose, key, "auto", "w")  # accepted: the factory decides
    for key, expected in (("t", "a number"), ("n", "an integer"), ("flag", "true or false")):
        with pytest.raises(kdcore.UserError, match=rf"^w\.{key}: expected {expected}, got 'x'$"):
            _check_scalar(_strict, key, "x", "w")


def test_a_factory_user_error_gets_the_config_path() -> None:
    import types

    module = types.ModuleType("strict_plugin")

    def factory(mode: str = "sample"):
        raise kdcore.UserError(f"cosine: mode must be 'sample' or 'position', got {mode!r}")

    @kdcore.hookimpl
    def kdcore_losses():
        return [kdcore.Component("strict", factory, "raises a UserError")]

    module.kdcore_losses = kdcore_losses
    loaded = isolated_plugins(strict=module)
    with pytest.raises(kdcore.UserError) as err:
        kdcore.build("loss", "strict", plugins=loaded, where="teachers[0].distill[0].head.losses[0]",
                     mode="bogus")
    assert str(err.value) == ("teachers[0].distill[0].head.losses[0]: cosine: mode must be 'sample' "
                              "or 'position', got 'bogus'")


# --- the third-party example: pip install --target, then a real `kdcore run` --------------------

@pytest.fixture(scope="module")
def acme_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """examples/third-party-plugin installed by pip into a temp --target (a copy is built, so the
    build leaves nothing in the repository)."""
    source = tmp_path_factory.mktemp("acme-src") / "acme"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info"))
    target = tmp_path_factory.mktemp("acme-site")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--no-build-isolation", "--no-index", "--disable-pip-version-check",
                    "--target", str(target), str(source)], check=True, timeout=300)
    assert (target / "acme_kd_losses" / "plugin.py").is_file()
    return target


@pytest.mark.e2e
@pytest.mark.fashion
def test_example_plugin_installs_lists_and_runs(acme_site: Path, tmp_path: Path, tiny: list[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(acme_site))
    monkeypatch.delenv("KDCORE_PLUGINS", raising=False)
    code, out, _ = run_cli(["plugins", "--json"])
    row = next(r for r in json.loads(out) if r["name"] == "acme")
    assert (row["distribution"], row["version"], row["state"]) == ("acme-kd-losses", "0.1.0", "ok")
    assert row["requires_kdcore"] == "<0.2,>=0.1" and row["components"] == {"loss": ["cosine_feature"]}

    # KDCORE_CACHE_DIR (tests/conftest.py) is inherited: the session's runs share one teacher
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(acme_site), os.environ.get("PYTHONPATH", "")])}
    overrides = [arg for item in tiny for arg in ("--set", item)]
    proc = subprocess.run(
        [*kdcore_command(), "run", "--config", str(EXAMPLE / "fashion_mnist.yaml"), *overrides,
         "--output-dir", str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run_dir = Path(proc.stdout.strip().splitlines()[-1].removeprefix("run dir: "))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["epochs"] == 1 and 0 <= summary["student"]["top1"] <= 100
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert 0 < rows[-1]["train"]["cosine_feature"] < 2 * 2.0  # weight 2 x (1 - cos) in [0, 2]


def test_example_plugin_own_tests_pass_when_installed(acme_site: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """What the example's maintainers run (`pytest tests/`), in-process against the pip install."""
    monkeypatch.syspath_prepend(str(acme_site))
    monkeypatch.delenv("KDCORE_PLUGINS", raising=False)
    spec = importlib.util.spec_from_file_location("acme_example_tests", EXAMPLE / "tests" / "test_acme.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    ran, failures = 0, []
    with using_plugins(None):
        for name, obj in vars(module).items():
            cases = []
            if name.startswith("test_") and callable(obj):
                cases = [(name, obj, None)]
            elif name.startswith("Test") and isinstance(obj, type):
                instance = obj()
                cases = [(f"{name}.{m}", getattr(instance, m), instance)
                         for m in dir(obj) if m.startswith("test_")]
            for label, func, instance in cases:
                try:
                    if instance is not None:
                        instance.setup_method(func)
                    func()
                    ran += 1
                except (unittest.SkipTest, pytest.skip.Exception):
                    pass
                except Exception as exc:  # noqa: BLE001 - report every failure
                    failures.append(f"{label}: {type(exc).__name__}: {exc}")
                finally:
                    if instance is not None:
                        instance.teardown_method(func)
    assert not failures, "\n".join(failures)
    assert ran >= 40
    assert "site-packages" not in sys.modules["acme_kd_losses"].__file__
    assert sys.modules["acme_kd_losses"].__file__.startswith(str(acme_site))  # the installed copy



# --- presets by name ------------------------------------------------------------------------------

def test_presets_run_by_name_with_preset_or_config() -> None:
    with using_plugins(isolated_plugins()):
        by_preset = CliRunner().invoke(main, ["run", "--preset", "vanilla", "--print-config"])
        by_config = CliRunner().invoke(main, ["run", "--config", "vanilla", "--print-config"])
        typo = CliRunner().invoke(main, ["run", "--preset", "vanila", "--print-config"])
        neither = CliRunner().invoke(main, ["run", "--config", "vanila", "--print-config"])
        both = CliRunner().invoke(main, ["run", "--preset", "vanilla", "--config", "x.yaml"])
        listed = CliRunner().invoke(main, ["list", "presets"])
    assert by_preset.exit_code == 0 and "type: vanilla" in by_preset.stdout
    assert by_config.stdout == by_preset.stdout
    assert typo.exit_code == 2 and "unknown preset 'vanila' (did you mean 'vanilla'" in typo.stderr
    assert neither.exit_code == 2 and neither.stderr.startswith(
        "kdcore: error: config file vanila does not exist, and it is no installed preset 'vanila'")
    assert both.exit_code == 2 and "give one" in both.stderr
    listed_ids = {line.split()[0] for line in listed.stdout.splitlines()}
    assert listed_ids == {"kdcore:teacher_student", "kdcore:vanilla"}


def test_a_missing_plugin_preset_names_the_distribution() -> None:
    with using_plugins(isolated_plugins()):
        result = CliRunner().invoke(main, ["run", "--preset", "rkd"])
    assert result.exit_code == 2
    assert ("--preset: unknown preset 'rkd'; it is provided by kdcore-plugin-rkd: "
            "pip install kdcore-plugin-rkd") in result.stderr
