"""kdcore draw: the picture of test images with the ground truth, the teacher and each run's
student, for segmentation (masks) and detection (boxes) runs; what it cannot draw is one line
with exit code 2."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest
import torch
from click.testing import CliRunner
from cli_runs import error_line, invoke_sets as invoke, own_imports, run_dir_of

from kdcore.cli import main

pytestmark = pytest.mark.fashion

#: a seconds-long segmentation run: 64 training scenes, a 1-epoch teacher, CWD on the logits
SEG = ["data.type=fashion_scenes", "data.params.train_scenes=64", "data.params.test_scenes=32",
       "data.batch_size=32", "data.eval_batch_size=32", "student.type=seg_student",
       "teachers.0.type=seg_teacher", "teachers.0.train.epochs=1", "teachers.0.train.batch_size=32",
       "trainer.epochs=1", "algorithm.student_loss_weight=1.0",
       'teachers.0.distill=[{student_module: classifier, teacher_module: classifier, '
       'head: {losses: [{type: cwd, weight: 3.0, tau: 1.0}]}}]']
#: a seconds-long detection run: 96 scenes of 0 to 2 items, a 1-epoch teacher, yolo_kd on the head
DET = ["data.type=fashion_scenes", "data.params.task=detection", "data.params.train_scenes=96",
       "data.params.test_scenes=32", "data.params.items=[0, 2]", "data.batch_size=32",
       "data.eval_batch_size=32", "student.type=yolo_student", "teachers.0.type=yolo_teacher",
       "teachers.0.train.epochs=1", "teachers.0.train.batch_size=32", "trainer.epochs=1",
       "algorithm.student_loss_weight=1.0", "optimizer.type=adam", "optimizer.lr=0.003",
       "optimizer.weight_decay=0.0", "teachers.0.train.optimizer.type=adam",
       "teachers.0.train.optimizer.lr=0.003", "teachers.0.train.optimizer.weight_decay=0.0",
       'teachers.0.distill=[{student_module: head, teacher_module: head, '
       'head: {losses: [{type: yolo_kd, weight: 1.0}]}}]']
#: a seconds-long classification run
QUICK = ["data.train_limit=128", "data.test_limit=128", "trainer.epochs=1", "data.batch_size=64",
         "trainer.progress=false", "trainer.threads=1"]


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """The teachers these runs train are kept in a cache of the test's own."""
    monkeypatch.setenv("KDCORE_CACHE_DIR", str(tmp_path / "cache"))


def test_a_segmentation_picture_has_input_truth_teacher_and_student_columns(tmp_path) -> None:
    result = invoke(tmp_path, *SEG)
    assert result.exit_code == 0, result.output
    run_dir = run_dir_of(result.output)
    drawn = CliRunner().invoke(main, ["draw", run_dir, "--out", str(tmp_path / "scenes.png"), "--count", "2"])
    assert drawn.exit_code == 0, drawn.output
    assert drawn.output.strip() == f"picture: {tmp_path / 'scenes.png'}"
    from PIL import Image

    width, height = Image.open(tmp_path / "scenes.png").size
    assert abs(width / height - 4 / 2) < 0.1  # 4 columns (input, truth, teacher, student), 2 rows


def test_a_detection_run_is_drawn_as_boxes(tmp_path) -> None:
    result = invoke(tmp_path, *DET, "data.labelled=48")
    assert result.exit_code == 0, result.output
    picture = tmp_path / "boxes.png"
    run_dir = run_dir_of(result.output)
    drawn = CliRunner().invoke(main, ["draw", run_dir, "--out", str(picture), "--count", "2"])
    assert drawn.exit_code == 0, drawn.output
    assert picture.stat().st_size > 1000


def test_a_folder_that_is_not_a_finished_run_is_one_line(tmp_path) -> None:
    line = error_line(CliRunner().invoke(main, ["draw", str(tmp_path)]), 2)
    assert line == (f"kdcore: error: {tmp_path}: no summary.json; kdcore draw needs a finished run "
                    f"directory (kdcore run writes summary.json and student.pt at the end)")


NET = '''
from torch import nn


def make_net(num_classes, in_channels, width: int = 4):
    return nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))
'''


@pytest.fixture
def usernets() -> Iterator[None]:
    """The test's ``usernets`` package and the run's import_paths, forgotten after it."""
    with own_imports("usernets"):
        yield


def test_an_imported_student_loads_for_export_and_draw_in_a_fresh_process(tmp_path, usernets) -> None:
    """``type: import`` students are found through the run's saved ``import_paths``, by export
    and draw alike (draw once rebuilt the student without them); both load it with
    ``kdcore.finished_run.load_run_student``."""
    from kdcore.finished_run import load_run_student
    from kdcore.models.imported import use_import_paths

    project = tmp_path / "project"
    (project / "usernets").mkdir(parents=True)
    (project / "usernets" / "__init__.py").write_text("")
    (project / "usernets" / "nets.py").write_text(NET)
    (project / "exp.yaml").write_text('algorithm: {type: vanilla}\n'
                                      'student: {type: import, target: "usernets.nets:make_net"}\n')
    result = CliRunner().invoke(main, ["run", "--config", str(project / "exp.yaml"), "--output-dir",
                                       str(tmp_path / "runs"), *[a for i in QUICK for a in ("--set", i)]],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    run_dir = result.output.strip().splitlines()[-1][len("run dir: "):]

    def forget() -> None:  # what a fresh process knows: usernets nowhere on sys.path, no import_paths
        sys.path[:] = [p for p in sys.path if p != str(project)]  # own_imports restores sys.path after
        for name in [m for m in sys.modules if m.split(".")[0] == "usernets"]:
            del sys.modules[name]
        use_import_paths([])

    forget()
    _, _, student = load_run_student(run_dir)
    state = torch.load(f"{run_dir}/student.pt", weights_only=True)
    assert all(torch.equal(student.state_dict()[k], v) for k, v in state.items())
    forget()
    drawn = CliRunner().invoke(main, ["draw", run_dir, "--out", str(tmp_path / "x.png")])
    # past loading the models: a classification run is refused for what it is, not for an import
    assert drawn.exit_code == 2 and "is a label task" in drawn.output, drawn.output
