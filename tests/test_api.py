"""kdcore.distill: the Python entry point runs what `kdcore run` runs, on objects the user holds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import kdcore
from kdcore.cli import main
from kdcore.data.fashion_mnist import fashion_mnist
from kdcore.errors import UserError

pytestmark = pytest.mark.fashion

N = 256
TIMING = {"seconds", "images_per_second"}
CONFIG = {"data": {"batch_size": 64}, "trainer": {"epochs": 1, "progress": False, "threads": 1}}


@pytest.fixture(scope="module")
def data() -> dict:
    source = fashion_mnist()
    return {"train": (source.train.inputs[:N], source.train.targets[:N]),
            "test": (source.test.inputs[:N], source.test.targets[:N])}


@pytest.fixture
def teacher_file(tmp_path) -> Path:
    torch.manual_seed(1)
    teacher = kdcore.build("model", "cnn_teacher", context={"num_classes": 10, "in_channels": 1})
    path = tmp_path / "teacher.pt"
    torch.save(teacher.state_dict(), path)
    return path


def cnn(name: str, seed: int = 0, weights: Path | None = None) -> torch.nn.Module:
    torch.manual_seed(seed)  # as a run builds its student: seeded by the config's seed
    model = kdcore.build("model", name, context={"num_classes": 10, "in_channels": 1})
    if weights is not None:
        model.load_state_dict(torch.load(weights, weights_only=True))
    return model


def rows(run_dir: str | Path) -> list[dict]:
    found = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    for row in found:
        for key in TIMING:
            row["train"].pop(key)
    return found


def test_distill_equals_kdcore_run_and_trains_the_users_student(data, teacher_file, tmp_path) -> None:
    teacher = cnn("cnn_teacher", weights=teacher_file)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = cnn("cnn_student")
    quick = ["data.batch_size=64", "trainer.epochs=1", "trainer.progress=false", "trainer.threads=1"]
    # config=None: the default job's config, as `kdcore run` without --config
    summary, trained = kdcore.distill(student, teacher, train=data["train"], test=data["test"],
                                      overrides=[*quick, f"output_dir={tmp_path / 'api'}"])
    run_dir = Path(summary["run_dir"])
    assert trained is student and summary["epochs"] == 1 and summary["algo"] == "teacher_student"
    for name in ("config.yaml", "metrics.jsonl", "checkpoints/last.pt", "student.pt", "summary.json"):
        assert (run_dir / name).exists(), name
    saved = torch.load(run_dir / "student.pt", weights_only=True)
    assert all(torch.equal(saved[k], v) for k, v in student.state_dict().items())
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())  # frozen

    # the same job from the command line: the same rows, to the last digit
    items = ["data.train_limit=256", "data.test_limit=256", *quick, f"teachers.0.checkpoint={teacher_file}"]
    result = CliRunner().invoke(main, ["run", "--output-dir", str(tmp_path / "cli"),
                                       *[a for i in items for a in ("--set", i)]], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    cli_dir = result.output.strip().splitlines()[-1][len("run dir: "):]
    assert rows(cli_dir) == rows(run_dir)
    cli_summary = json.loads((Path(cli_dir) / "summary.json").read_text())
    assert cli_summary["student"]["top1"] == summary["student"]["top1"]
    assert cli_summary["teacher"]["top1"] == summary["teacher"]["top1"]


def test_a_stopped_call_resumes_and_a_student_alone_trains(data, tmp_path) -> None:
    student = cnn("cnn_student")
    summary, _ = kdcore.distill(student, None, train=data["train"], test=data["test"],
                                config={**CONFIG, "output_dir": str(tmp_path)})
    assert summary["algo"] == "vanilla" and "teacher" not in summary
    summary, _ = kdcore.distill(student, None, train=data["train"], test=data["test"],
                                resume=summary["run_dir"], overrides=["trainer.epochs=2"])
    assert summary["epochs"] == 2 and len(rows(summary["run_dir"])) == 2
    assert "api" not in kdcore.plugins.get_plugins().in_process  # registered for the call only


def test_a_dataset_and_named_teachers_with_their_own_distill_points(data, teacher_file, tmp_path) -> None:
    train = torch.utils.data.TensorDataset(*data["train"])
    teacher = cnn("cnn_teacher", weights=teacher_file)
    config = {**CONFIG, "output_dir": str(tmp_path), "teachers": [{"name": "big", "distill": [
        {"student_module": "stage3", "teacher_module": "stage3",
         "head": {
                  "losses": [{"type": "at", "name": "feat"}]}}]}]}
    summary, _ = kdcore.distill(cnn("cnn_student"), {"big": teacher}, train=train, test=data["test"],
                                num_classes=10, config=config)
    assert "big" in summary["teachers"]
    assert "feat" in rows(summary["run_dir"])[0]["train"]


def test_wrong_objects_are_one_line(data) -> None:
    with pytest.raises(UserError, match="student: expected a torch.nn.Module, got str"):
        kdcore.distill("net", None, train=data["train"], test=data["test"])
    with pytest.raises(UserError, match="train: 3 inputs but 2 targets"):
        kdcore.distill(cnn("cnn_student"), None, train=(torch.zeros(3, 1, 28, 28), torch.zeros(2)),
                       test=data["test"])
