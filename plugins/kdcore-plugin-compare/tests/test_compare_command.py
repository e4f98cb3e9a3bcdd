"""``kdcore compare`` is this plugin's: listed in ``kdcore --help``, and without the plugin one
line says where the command comes from and how to get it."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from kdcore.cli import main
from kdcore.plugins import Plugins
from kdcore.testing import using_plugins


def error_line(result) -> str:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


def test_compare_is_a_plugin_command() -> None:
    with using_plugins(None):
        listed = CliRunner().invoke(main, ["--help"])
        shown = CliRunner().invoke(main, ["compare", "--help"])
    assert listed.exit_code == 0 and "compare" in listed.output
    assert shown.exit_code == 0 and "--methods" in shown.output and "--resume" in shown.output


def test_left_out_by_kdcore_plugins_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KDCORE_PLUGINS", "")  # no third-party plugin loads
    with using_plugins(None):
        line = error_line(CliRunner().invoke(main, ["compare", "--config", "teacher_student"]))
    assert line == ("kdcore: error: no command 'compare'; it comes from plugin 'compare' "
                    "(kdcore-plugin-compare), which KDCORE_PLUGINS='' leaves out; see 'kdcore --help'")


def test_not_installed_says_how_to_install_it() -> None:
    with using_plugins(Plugins(load_entry_points=False)):  # the core alone
        line = error_line(CliRunner().invoke(main, ["compare", "--config", "teacher_student"]))
    assert line.startswith("kdcore: error: no command 'compare'; it is provided by kdcore-plugin-compare: "
                           "pip install kdcore-plugin-compare"), line


def test_resume_refuses_the_options_its_plan_holds(tmp_path) -> None:
    """A resumed compare repeats compare.json: the options it saved are named as the user
    typed them (--config, --set), before any file is read."""
    args = ["compare", "--resume", str(tmp_path), "--config", "x.yaml", "--set", "seed=1", "--teacher-cache",
            "--parallel", "2"]  # --parallel may change on resume
    with using_plugins(None):
        line = error_line(CliRunner().invoke(main, args))
    assert line == (f"kdcore: error: --resume {tmp_path} repeats the saved compare; drop --config, --set, "
                    f"--teacher-cache")
