"""``type: import``: a model from the user's own code, found next to the config file, with the
signature checks and one-line errors of any component."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from cli_runs import own_imports

from kdcore.cli import main

NETS = '''
from torch import nn


def make_net(num_classes, in_channels, width: int = 8):
    """A tiny CNN; its signature is the config schema."""
    return nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))


class Net(nn.Module):
    def __init__(self, num_classes: int, hidden: int = 16):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(784, hidden), nn.ReLU())
        self.fc = nn.Linear(hidden, num_classes)

    def forward(self, x):
        return self.fc(self.body(x))


def not_a_model(num_classes, width=1):
    return "oops"
'''

QUICK = ["data.train_limit=128", "data.test_limit=128", "trainer.epochs=1", "data.batch_size=64",
         "trainer.progress=false", "trainer.threads=1"]


@pytest.fixture
def project(tmp_path) -> Iterator[Path]:
    """A user's folder: a package of their own and a config next to it (not on sys.path), its
    modules forgotten after the test so no other test's ``mypkg`` is this one."""
    (tmp_path / "mypkg").mkdir()
    (tmp_path / "mypkg" / "__init__.py").write_text("")
    (tmp_path / "mypkg" / "models.py").write_text(NETS)
    (tmp_path / "broken.py").write_text("import torch\n\nx = 1 / 0\n")
    (tmp_path / "exp.yaml").write_text(textwrap.dedent("""\
        algorithm: {type: vanilla}
        student: {type: import, target: "mypkg.models:make_net", width: 4}
        """))
    with own_imports("mypkg"):
        yield tmp_path


def cli(*args: str) -> object:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def sets(*items: str) -> list[str]:
    return [a for i in items for a in ("--set", i)]


@pytest.mark.fashion
def test_a_model_from_next_to_the_config_trains_and_resumes_from_elsewhere(project, tmp_path) -> None:
    out = tmp_path / "runs"
    result = cli("run", "--config", str(project / "exp.yaml"), "--output-dir", str(out), *sets(*QUICK))
    assert result.exit_code == 0, result.output
    run_dir = Path(result.output.strip().splitlines()[-1][len("run dir: "):])
    saved = (run_dir / "config.yaml").read_text()
    assert f"- {project}" in saved  # import_paths, absolute: the run resumes from anywhere
    state = __import__("torch").load(run_dir / "student.pt", weights_only=True)
    assert state["0.weight"].shape == (4, 1, 3, 3)  # width: 4 reached make_net
    # a fresh process in another folder, with mypkg nowhere on its sys.path
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-m", "kdcore", "run", "--resume", str(run_dir),
                           "--set", "trainer.epochs=2"], cwd="/", env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((run_dir / "summary.json").read_text())["epochs"] == 2


@pytest.mark.fashion
def test_a_class_and_a_file_path_work_as_teacher_and_student(project, tmp_path) -> None:
    result = cli("run", "--config", str(project / "exp.yaml"), "--output-dir", str(tmp_path / "runs"),
                 *sets(*QUICK, "algorithm.type=teacher_student",
                       "student={type: import, target: 'mypkg/models.py:Net', hidden: 8}",
                       "teachers=[{type: import, target: 'mypkg.models:Net', hidden: 32, "
                       "train: {epochs: 1, train_limit: 128}, distill: [{student_module: output, "
                       "teacher_module: output, head: {losses: [{type: kd}]}}]}]"))
    assert result.exit_code == 0, result.output
    assert "student top1:" in result.output and "teacher top1:" in result.output


@pytest.mark.parametrize("item, expected", [
    ("student.target=mypkg.models:make_nett",
     "student.target: mypkg.models has no 'make_nett' (did you mean 'make_net'?)"),
    ("student.target=nopkg.models:make_net", "student.target: no module 'nopkg.models' (searched import_paths"),
    ("student.target=make_net", "student.target: 'make_net' should be 'module:function'"),
    ("student.target=broken.py:f", "student.target: importing"),
    ("student.widht=3", "student.widht: unknown key (did you mean 'width'?)"),
    ("student.width=wide", "student.width: expected an integer, got 'wide'"),
    ("student.target=mypkg.models:not_a_model", "student: mypkg.models:not_a_model returned a str, not a torch.nn.Module"),
])
def test_mistakes_are_one_line(project, item, expected) -> None:
    result = cli("run", "--config", str(project / "exp.yaml"), "--output-dir", str(project / "runs"),
                 *sets(*QUICK, item))
    assert result.exit_code == 2, result.output
    assert expected in result.output and "Traceback" not in result.output
    if "broken" in item:
        assert f"ZeroDivisionError: division by zero ({project / 'broken.py'}:3)" in result.output


@pytest.mark.parametrize("item, expected", [
    ("student.widht=3", "student.widht: unknown key (did you mean 'width'?)"),
    ("student.width=wide", "student.width: expected an integer, got 'wide'"),
    ("student.target=mypkg.models:nope", "mypkg.models has no 'nope'"),
])
def test_print_config_checks_the_target_signature(project, item, expected) -> None:
    result = cli("run", "--print-config", "--config", str(project / "exp.yaml"), *sets(item))
    assert result.exit_code == 2 and expected in result.output, result.output
