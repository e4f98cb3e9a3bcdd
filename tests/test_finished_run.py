"""A finished run read back (kdcore.finished_run): the student from student.pt, the teacher from
the checkpoint summary.json names, each rebuilt from the run's config.yaml."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from cli_runs import only_run_dir, run_files, sets

from kdcore.cli import main
from kdcore.errors import UserError
from kdcore.finished_run import load_run_student, load_run_teacher

pytestmark = pytest.mark.fashion


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return run_files(tmp_path_factory.mktemp("finished"))


def finished_run(files: dict[str, Path], out: Path, *extra: str, teacher: bool = True) -> Path:
    """A 1-epoch run on :func:`cli_runs.run_files`, with its teacher checkpoint or without a teacher."""
    args = sets(files, "trainer.epochs=1", *extra)
    if not teacher:  # without the pair "--set teachers.0.checkpoint=..."
        i = next(i for i, a in enumerate(args) if a.startswith("teachers.0.checkpoint="))
        args = ["--algo", "vanilla", *args[:i - 1], *args[i + 1:]]
    result = CliRunner().invoke(main, ["run", "--output-dir", str(out), *args])
    assert result.exit_code == 0, result.output
    return only_run_dir(out)


def same_weights(model: torch.nn.Module, path: Path) -> bool:
    state = torch.load(path, weights_only=True)
    return state.keys() == model.state_dict().keys() and all(
        torch.equal(model.state_dict()[k], v) for k, v in state.items())


def test_the_student_and_the_teacher_of_a_run_share_its_data(files, tmp_path) -> None:
    run_dir = finished_run(files, tmp_path / "runs")
    config, splits, student = load_run_student(str(run_dir))
    assert same_weights(student, run_dir / "student.pt")
    same_config, same_splits, teacher = load_run_teacher(str(run_dir), splits)
    assert same_splits is splits and same_config.teachers[0].type == "cnn_teacher"
    assert same_weights(teacher, files["teacher"])  # the checkpoint summary.json names
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["teacher"]["checkpoint"] == str(files["teacher"])


def test_a_run_without_a_teacher_checkpoint_has_no_teacher(files, tmp_path) -> None:
    run_dir = finished_run(files, tmp_path / "runs", teacher=False)
    assert load_run_teacher(str(run_dir))[2] is None
    teacher = tmp_path / "teacher.pt"
    shutil.copy(files["teacher"], teacher)
    with_teacher = finished_run(files, tmp_path / "more", f"teachers.0.checkpoint={teacher}")
    teacher.unlink()  # as a cleared cache takes a teacher the run trained
    assert load_run_teacher(str(with_teacher))[2] is None


@pytest.mark.parametrize("setup, expected", [
    (lambda d: None, "no config.yaml there"),
    (lambda d: (d / "config.yaml").write_text("student: {type: cnn_student}\n"), "no summary.json"),
])
def test_a_folder_that_is_not_a_finished_run_has_no_teacher_to_load(tmp_path, setup, expected) -> None:
    setup(tmp_path)
    with pytest.raises(UserError, match=expected):
        load_run_teacher(str(tmp_path))
