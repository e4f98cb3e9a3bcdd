"""The ``mlflow`` logger: one MLflow run per kdcore run, through ``MlflowClient`` (no global
"active run", so it cannot collide with the user's own ``mlflow.start_run``)."""

from __future__ import annotations

import os
import re
import time
from typing import Any

import yaml

from kdcore.errors import UserError
from kdcore.loggers import Logger, flat_metrics

#: the MLflow run id of a kdcore run, so that --resume continues the same MLflow run
RUN_ID_FILE = "mlflow_run_id"
#: MLflow takes at most this many params or metrics per log_batch call
BATCH = 100


def flat_params(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """The config as MLflow params: ``trainer.epochs -> "8"``; lists as their YAML text."""
    params: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            params.update(flat_params(value, f"{name}."))
        else:
            text = value if isinstance(value, str) else yaml.safe_dump(value, default_flow_style=True).strip()
            params[name] = text.removesuffix("\n...").strip()[:6000]
    return params


def metric_name(name: str) -> str:
    """MLflow takes letters, digits, ``_ - . /`` and spaces: ``kd@stage3`` becomes ``kd_stage3``."""
    return re.sub(r"[^\w\-./ ]", "_", name)


class MlflowLogger(Logger):
    """Logs the config as params (and ``config.yaml`` artifact), each epoch's numbers as metrics
    (step = epoch), the summary as ``summary/...`` metrics and a ``summary.json`` artifact.

    :param tracking_uri: where MLflow stores runs; default the local folder
        ``<output_dir>/mlruns`` shared by every run of that folder (``mlflow ui
        --backend-store-uri runs/mlruns``). A server (``http://...``) or, with the full
        ``mlflow`` package, ``sqlite:///mlflow.db`` work too.
    :param experiment: the MLflow experiment, created when missing.
    :param run_name: default the run directory's name.
    """

    def __init__(self, run_dir: str, first_epoch: int = 1, tracking_uri: str | None = None,
                 experiment: str = "kdcore", run_name: str | None = None) -> None:
        try:
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise UserError("logger mlflow needs the mlflow client: pip install mlflow-skinny") from None
        uri = tracking_uri or "file:" + os.path.join(os.path.dirname(os.path.abspath(run_dir)), "mlruns")
        if uri.startswith("file:") or "://" not in uri:
            # MLflow 3 keeps its file store (local, no server) behind this opt-in
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=uri)
        self.finished = False
        id_file = os.path.join(run_dir, RUN_ID_FILE)
        self.resumed = os.path.exists(id_file)
        if self.resumed:  # --resume: the same MLflow run goes on
            with open(id_file, encoding="utf-8") as f:
                self.run_id = f.read().strip()
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            found = self.client.get_experiment_by_name(experiment)
            experiment_id = found.experiment_id if found else self.client.create_experiment(experiment)
            run = self.client.create_run(experiment_id, run_name=run_name or os.path.basename(run_dir),
                                         tags={"kdcore.run_dir": os.path.abspath(run_dir)})
            self.run_id = run.info.run_id
            with open(id_file, "w", encoding="utf-8") as f:
                f.write(self.run_id + "\n")

    def log_config(self, config: dict[str, Any]) -> None:
        from mlflow.entities import Param

        self.client.log_text(self.run_id, yaml.safe_dump(config, sort_keys=False), "config.yaml")
        if self.resumed:  # MLflow refuses to change a logged param; config.yaml says what changed
            return
        params = [Param(k, v) for k, v in flat_params(config).items()]
        for start in range(0, len(params), BATCH):
            self.client.log_batch(self.run_id, params=params[start:start + BATCH])

    def _metrics(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(metric_name(k), v, now, step) for k, v in values.items()]
        for start in range(0, len(metrics), BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[start:start + BATCH])

    def log_epoch(self, row: dict[str, Any]) -> None:
        values = flat_metrics(row)
        values.update({f"lr_groups/{i}": lr for i, lr in enumerate(row.get("lr_groups", []))})
        self._metrics(values, int(row["epoch"]))

    def log_summary(self, summary: dict[str, Any]) -> None:
        self._metrics({f"summary/{k}": v for k, v in flat_metrics(summary).items()},
                      int(summary.get("epochs", 0)))
        self.client.log_dict(self.run_id, summary, "summary.json")
        self.client.set_terminated(self.run_id, "FINISHED")
        self.finished = True

    def close(self) -> None:
        if not self.finished:  # stopped early; a --resume sets it running again
            self.client.set_terminated(self.run_id, "KILLED")
            self.finished = True
