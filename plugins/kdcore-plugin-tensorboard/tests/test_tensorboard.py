"""The TensorBoard logger, read back from its event files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import kdcore
from kdcore.testing import run_preset
from kdcore_plugin_tensorboard.logger import TensorBoardLogger


def read(folder: Path) -> EventAccumulator:
    events = EventAccumulator(str(folder))
    events.Reload()
    return events


def row(epoch: int, kd: float) -> dict:
    return {"epoch": epoch, "lr": 0.1 / epoch, "train": {"task": 1.0, "kd": kd, "loss": 1.0 + kd},
            "student": {"test": {"top1": 50.0 + epoch}}}


def test_epochs_config_and_summary_are_in_the_event_files(tmp_path) -> None:
    logger = TensorBoardLogger(str(tmp_path))
    logger.log_config({"trainer": {"epochs": 2}})
    logger.log_epoch(row(1, 0.5))
    logger.log_epoch(row(2, 0.25))
    logger.log_summary({"epochs": 2, "student": {"top1": 52.0}})
    logger.close()
    events = read(tmp_path / "tensorboard")
    assert [(e.step, e.value) for e in events.Scalars("train/kd")] == [(1, 0.5), (2, 0.25)]
    assert [e.value for e in events.Scalars("lr")] == pytest.approx([0.1, 0.05])
    assert [e.value for e in events.Scalars("student/test/top1")] == [51.0, 52.0]
    assert events.Scalars("summary/student/top1")[0].value == 52.0
    texts = {tag: events.Tensors(f"{tag}/text_summary")[0].tensor_proto.string_val[0].decode()
             for tag in ("config", "summary")}
    assert "epochs: 2" in texts["config"] and '"top1": 52.0' in texts["summary"]


def test_a_resume_replaces_the_epochs_written_again(tmp_path) -> None:
    first = TensorBoardLogger(str(tmp_path))
    first.log_epoch(row(1, 0.5))
    first.log_epoch(row(2, 0.4))  # epoch 2 after the last checkpoint: replayed on resume
    first.close()
    resumed = TensorBoardLogger(str(tmp_path), first_epoch=2)
    resumed.log_epoch(row(2, 0.3))
    resumed.close()
    assert [(e.step, e.value) for e in read(tmp_path / "tensorboard").Scalars("train/kd")] == \
        [(1, 0.5), (2, pytest.approx(0.3))]


def test_the_plugin_registers_the_logger() -> None:
    assert "tensorboard:tensorboard" in [r.id for r in kdcore.components("logger")]


@pytest.mark.e2e
def test_a_run_logs_every_epoch_to_tensorboard(tmp_path) -> None:
    summary = run_preset("kdcore", "teacher_student.yaml", tmp_path,
                         extra=("trainer.epochs=2", "trainer.loggers=[tensorboard]"))
    run_dir = Path(summary["run_dir"])
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    events = read(run_dir / "tensorboard")
    for term in ("task", "kd", "loss"):
        assert [e.value for e in events.Scalars(f"train/{term}")] == \
            pytest.approx([r["train"][term] for r in rows])
    assert [e.step for e in events.Scalars("lr")] == [1, 2]
    assert events.Scalars("summary/student/top1")[0].value == pytest.approx(summary["student"]["top1"])
