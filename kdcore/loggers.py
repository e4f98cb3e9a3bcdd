"""Experiment loggers: where a run's numbers go besides the terminal.

``metrics.jsonl`` is the built-in logger (``jsonl``) and always on, since ``--resume`` reads it
back. ``trainer.loggers`` adds others by name (``[tensorboard, mlflow]``, or ``{type: mlflow,
experiment: ablations}`` with parameters); plugins provide them through the ``kdcore_loggers``
hook. A logger gets, on rank 0 only: the resolved config once, every epoch's ``metrics.jsonl``
row (loss terms, learning rate, scores), the final summary, then ``close()``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

from .config import ComponentConfig, RunConfig, unstructure


class Logger:
    """Base class of a logger: override the methods you need (each does nothing here).

    A logger factory is called with the user's parameters plus, when its signature names them,
    ``run_dir`` (the run directory), ``config`` (the resolved config as plain data) and
    ``first_epoch`` (1, or after ``--resume`` the first epoch written again: rows from it on
    replace what an earlier, interrupted process logged)."""

    def log_config(self, config: dict[str, Any]) -> None:
        """The resolved config, as written to ``config.yaml``; once, before training."""

    def log_epoch(self, row: dict[str, Any]) -> None:
        """One epoch's ``metrics.jsonl`` row: ``epoch``, ``lr``, ``train`` (loss terms, ``loss``,
        throughput) and ``<model>.<split>.<metric>`` scores (docs/outputs.md)."""

    def log_summary(self, summary: dict[str, Any]) -> None:
        """The final ``summary.json``; once, after training."""

    def close(self) -> None:
        """Flush and release; called at the end and when a run stops early (a resume reopens)."""


def flat_metrics(row: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The numbers of a row or summary as ``{"train/kd": 0.3, "student/test/top1": 84.1}``, for
    trackers that take flat scalar names; ``epoch`` (the step) and text are left out."""
    flat: dict[str, float] = {}
    for key, value in row.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flat_metrics(value, f"{name}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and name != "epoch":
            flat[name] = float(value)
    return flat


class JsonlLogger(Logger):
    """``metrics.jsonl``: one JSON row per epoch, appended (docs/outputs.md)."""

    def __init__(self, run_dir: str) -> None:
        self.path = os.path.join(run_dir, "metrics.jsonl")

    def log_epoch(self, row: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")


class Loggers(Logger):
    """Every logger of a run, called in order. ``metrics.jsonl`` comes first and its errors stop
    the run (a resume needs it); a tracker that fails is named once and dropped, since a broken
    dashboard should not cost the training."""

    def __init__(self, loggers: list[tuple[str, Logger]], log: Callable[[str], None] = print) -> None:
        self.loggers, self.log = loggers, log

    def _each(self, method: str, *args: Any) -> None:
        for name, logger in list(self.loggers):
            try:
                getattr(logger, method)(*args)
            except Exception as exc:  # a tracker's own failure: warn, keep training
                if isinstance(logger, JsonlLogger):
                    raise
                self.log(f"warning: logger {name} failed in {method} ({type(exc).__name__}: "
                         f"{exc}); it is dropped for the rest of the run")
                self.loggers.remove((name, logger))

    def log_config(self, config: dict[str, Any]) -> None:
        self._each("log_config", config)

    def log_epoch(self, row: dict[str, Any]) -> None:
        self._each("log_epoch", row)

    def log_summary(self, summary: dict[str, Any]) -> None:
        self._each("log_summary", summary)

    def close(self) -> None:
        self._each("close")
        self.loggers = []


def logger_configs(config: RunConfig) -> list[ComponentConfig]:
    """``trainer.loggers`` as component blocks (a bare name is ``{type: name}``)."""
    return [item if isinstance(item, ComponentConfig) else ComponentConfig(item)
            for item in config.trainer.loggers]


def open_loggers(config: RunConfig, run_dir: str, first_epoch: int,
                 log: Callable[[str], None] = print) -> Loggers:
    """Build ``metrics.jsonl``'s logger and those of ``trainer.loggers``, and hand them the config."""
    from .registry import build

    plain = unstructure(config)
    context = {"run_dir": run_dir, "config": plain, "first_epoch": first_epoch}
    loggers: list[tuple[str, Logger]] = [("jsonl", JsonlLogger(run_dir))]
    for i, block in enumerate(logger_configs(config)):
        if block.type == "jsonl":
            continue  # always on
        loggers.append((block.type, build("logger", block.type, where=f"trainer.loggers[{i}]",
                                          context=context, **block.params)))
    result = Loggers(loggers, log)
    result.log_config(plain)
    return result
