"""Plugin commands (the ``kdcore_commands`` hook): a plugin adds ``kdcore NAME``; kdcore's own
commands keep their names; a broken command is a warning of its plugin and the CLI works."""

from __future__ import annotations

import types

import click
from cli_runs import error_line, invoke_with

import kdcore
from kdcore.cli import user_errors
from kdcore.errors import UserError


@click.command()
@click.argument("run_dir")
@user_errors
def report(run_dir: str) -> None:
    """Print a run's summary."""
    if run_dir == "missing":
        raise UserError("run directory 'missing' does not exist; give a folder 'kdcore run' made")
    click.echo(f"report of {run_dir}")


@click.command()
def fake_run() -> None:
    """A plugin's 'run' (must never replace kdcore's)."""
    click.echo("the plugin's run")


def plugin_with(*commands: kdcore.Component) -> types.ModuleType:
    module = types.ModuleType("commands_plugin")

    @kdcore.hookimpl
    def kdcore_commands():
        return list(commands)

    module.kdcore_commands = kdcore_commands
    return module


def test_a_plugin_command_runs_and_is_listed() -> None:
    plugin = plugin_with(kdcore.Component("report", report, "print a run's summary"))
    result = invoke_with(plugin, "reports", ["report", "runs/x"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "report of runs/x"
    assert "report" in invoke_with(plugin, "reports", ["--help"]).output
    assert invoke_with(plugin, "reports", ["reports:report", "y"]).output.strip() == "report of y"
    listed = invoke_with(plugin, "reports", ["list", "command"]).output
    assert "reports:report" in listed


def test_a_plugin_commands_user_error_is_one_line_exit_2() -> None:
    plugin = plugin_with(kdcore.Component("report", report))
    line = error_line(invoke_with(plugin, "reports", ["report", "missing"]), 2)
    assert line == ("kdcore: error: run directory 'missing' does not exist; "
                    "give a folder 'kdcore run' made")


def test_a_plugin_cannot_take_kdcores_own_command_name() -> None:
    plugin = plugin_with(kdcore.Component("run", fake_run), kdcore.Component("report", report))
    help_text = invoke_with(plugin, "shadow", ["run", "--help"]).output
    assert "Train (and distill)" in help_text  # kdcore's run
    assert invoke_with(plugin, "shadow", ["shadow:run"]).output.strip() == "the plugin's run"
    listing = invoke_with(plugin, "shadow", ["plugins"]).output
    assert "warning: command 'run' is kdcore's own; this plugin's is reachable as 'kdcore shadow:run'" in listing
    assert invoke_with(plugin, "shadow", ["report", "z"]).output.strip() == "report of z"


def test_a_broken_command_is_a_warning_and_the_cli_keeps_working() -> None:
    plugin = plugin_with(kdcore.Component("notacommand", lambda: None),
                         kdcore.Component("gone", "no_such_module_for_kdcore:cmd"),
                         kdcore.Component("report", report))
    result = invoke_with(plugin, "broken", ["--help"])
    assert result.exit_code == 0 and "report" in result.output
    assert invoke_with(plugin, "broken", ["report", "z"]).output.strip() == "report of z"
    line = error_line(invoke_with(plugin, "broken", ["gone"]), 2)
    assert line.startswith("kdcore: error: command 'gone' of plugin 'broken' cannot be used: it cannot "
                           "be loaded (ModuleNotFoundError: No module named 'no_such_module_for_kdcore')")
    line = error_line(invoke_with(plugin, "broken", ["notacommand"]), 2)
    assert line.startswith("kdcore: error: command 'notacommand' of plugin 'broken' cannot be used: "
                           "it is a function, not a click.Command")
    listing = invoke_with(plugin, "broken", ["plugins"]).output
    assert "warning: command 'notacommand': it is a function, not a click.Command; skipped" in listing


def test_a_command_declared_twice_says_so_rather_than_no_command() -> None:
    plugin = plugin_with(kdcore.Component("report", report), kdcore.Component("report", report))
    line = error_line(invoke_with(plugin, "twice", ["report", "x"]), 2)
    assert "command 'report' is declared 2 times by plugin 'twice'" in line, line
