"""The MLflow logger, read back from its local store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

import kdcore
from kdcore.testing import run_preset
from kdcore_plugin_mlflow.logger import MlflowLogger, flat_params


def row(epoch: int, kd: float) -> dict:
    return {"epoch": epoch, "lr": 0.1, "train": {"task": 1.0, "kd@stage3": kd},
            "student": {"test": {"top1": 50.0 + epoch}}}


def history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_a_run_is_logged_to_the_local_store_and_resumed(tmp_path) -> None:
    run_dir = tmp_path / "runs" / "kd-1"
    run_dir.mkdir(parents=True)
    logger = MlflowLogger(str(run_dir))
    logger.log_config({"trainer": {"epochs": 2, "loggers": ["mlflow"]}, "name": None})
    logger.log_epoch(row(1, 0.5))
    logger.close()  # stopped early
    client = MlflowClient(f"file:{tmp_path / 'runs' / 'mlruns'}")
    run_id = (run_dir / "mlflow_run_id").read_text().strip()
    run = client.get_run(run_id)
    assert run.info.status == "KILLED" and run.data.params["trainer.epochs"] == "2"
    assert run.data.params["trainer.loggers"] == "[mlflow]" and run.data.tags["kdcore.run_dir"] == str(run_dir)

    resumed = MlflowLogger(str(run_dir), first_epoch=2)  # the same MLflow run goes on
    resumed.log_config({"trainer": {"epochs": 2}})
    resumed.log_epoch(row(2, 0.25))
    resumed.log_summary({"epochs": 2, "student": {"top1": 52.0}})
    resumed.close()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert history(client, run_id, "train/kd_stage3") == [(1, 0.5), (2, 0.25)]
    assert history(client, run_id, "student/test/top1") == [(1, 51.0), (2, 52.0)]
    assert run.data.metrics["summary/student/top1"] == 52.0
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"config.yaml", "summary.json"} <= artifacts


def test_flat_params() -> None:
    assert flat_params({"a": {"b": 1, "c": [1, 2]}, "d": "x", "e": None}) == \
        {"a.b": "1", "a.c": "[1, 2]", "d": "x", "e": "null"}


def test_the_plugin_registers_the_logger() -> None:
    assert "mlflow:mlflow" in [r.id for r in kdcore.components("logger")]


@pytest.mark.e2e
def test_a_run_logs_to_mlflow(tmp_path) -> None:
    summary = run_preset("kdcore", "teacher_student.yaml", tmp_path,
                         extra=("trainer.epochs=2", "trainer.loggers=[{type: mlflow, experiment: tests}]"))
    run_dir = Path(summary["run_dir"])
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    client = MlflowClient(f"file:{tmp_path / 'runs' / 'mlruns'}")
    run_id = (run_dir / "mlflow_run_id").read_text().strip()
    run = client.get_run(run_id)
    assert client.get_experiment(run.info.experiment_id).name == "tests"
    assert history(client, run_id, "train/kd") == [(r["epoch"], pytest.approx(r["train"]["kd"])) for r in rows]
    assert [v for _, v in history(client, run_id, "lr")] == pytest.approx([r["lr"] for r in rows])
    assert run.data.params["trainer.epochs"] == "2" and run.info.status == "FINISHED"
    assert run.data.metrics["summary/student/top1"] == pytest.approx(summary["student"]["top1"])
