"""`kdcore inspect MODEL`: module paths with output shapes on a data set's or a given input, its
one-line errors, and the line kdcore prints when this plugin is not there."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from click.testing import CliRunner
from cli_runs import error_line, own_imports

from kdcore.cli import main
from kdcore.testing import isolated_plugins, using_plugins

#: a user's model module, found through ``type: import`` from the working directory
NET = '''
from torch import nn


class Net(nn.Module):
    def __init__(self, num_classes: int, hidden: int = 16):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(784, hidden), nn.ReLU())
        self.fc = nn.Linear(hidden, num_classes)

    def forward(self, x):
        return self.fc(self.body(x))
'''


def run_cli(*args: str) -> "object":
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_inspect_lists_paths_with_shapes() -> None:
    result = run_cli("inspect", "cnn_student", "--input-shape", "1,28,28")
    assert result.exit_code == 0
    assert "stage2.relu" in result.output and "(16, 7, 7)" in result.output and "output" in result.output


def test_inspect_set_overrides_what_the_input_shape_implies() -> None:
    result = run_cli("inspect", "resnet8", "--input-shape", "3,32,32", "--set", "num_classes=100")
    assert result.exit_code == 0, result.output
    assert "(100,)" in result.output.splitlines()[1]  # the model output


@pytest.mark.fashion
def test_inspect_takes_the_data_sets_parameters() -> None:
    result = CliRunner().invoke(main, ["inspect", "seg_student", "--dataset", "fashion_scenes",
                                       "--data", "train_scenes=8", "--data", "test_scenes=8"])
    assert result.exit_code == 0, result.output
    assert "input (1, 64, 64)" in result.output
    assert "classifier       (11, 32, 32)" in result.output
    assert "(11, 64, 64)     (model output)" in result.output


def test_inspect_shows_an_imported_models_paths(tmp_path, monkeypatch) -> None:
    (tmp_path / "mypkg").mkdir()
    (tmp_path / "mypkg" / "__init__.py").write_text("")
    (tmp_path / "mypkg" / "models.py").write_text(NET)
    monkeypatch.chdir(tmp_path)
    with own_imports("mypkg"):  # this test's mypkg, found from the working directory alone
        result = run_cli("inspect", "import", "--set", "target=mypkg.models:Net", "--input-shape", "1,28,28")
    assert result.exit_code == 0, result.output
    assert "body.1" in result.output and "fc" in result.output


@pytest.mark.parametrize("args, expected", [
    (["inspect", "cnn_student", "--input-shape", "3,32"],
     "model 'cnn_student' cannot take inputs of shape (3, 32)"),
    (["inspect", "cnn_student", "--input-shape", "0,28,28"],
     "--input-shape '0,28,28': expected positive sizes"),
    (["inspect", "resnet8", "--dataset", "cifar10", "--root", "/nonexistent"],
     "/nonexistent/cifar-10-batches-py is missing"),
    (["inspect", "cnn_studnet", "--input-shape", "1,28,28"],
     "unknown model 'cnn_studnet' (did you mean 'cnn_student'"),
])
def test_user_errors_exit_2_with_one_line(args, expected) -> None:
    assert expected in error_line(CliRunner().invoke(main, args), 2)


def test_without_the_plugin_inspect_names_the_package_to_install() -> None:
    with using_plugins(isolated_plugins()):  # kdcore alone: no plugin installed
        result = CliRunner().invoke(main, ["inspect", "x"])
    line = error_line(result, 2)
    assert result.output.strip() == line
    assert line.startswith("kdcore: error: no command 'inspect'; it is provided by kdcore-plugin-inspect: "
                           "pip install kdcore-plugin-inspect")


def test_with_the_plugin_left_out_inspect_says_so_in_one_line() -> None:
    """``KDCORE_PLUGINS=`` (empty) loads no plugin: the line names the package and why it is off."""
    env = {**os.environ, "KDCORE_PLUGINS": ""}
    proc = subprocess.run([sys.executable, "-m", "kdcore", "inspect", "x"], env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == "" and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("kdcore: error: no command 'inspect'; it comes from plugin 'inspect' "
                                  "(kdcore-plugin-inspect), which KDCORE_PLUGINS='' leaves out")
