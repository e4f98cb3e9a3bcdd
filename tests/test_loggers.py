"""Experiment loggers: the kdcore_loggers hook, metrics.jsonl as the built-in, and a failing
tracker that must not cost the training."""

from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner

import kdcore
from kdcore.cli import main
from kdcore.config import load_config
from kdcore.errors import UserError
from kdcore.loggers import JsonlLogger, Logger, Loggers, flat_metrics, open_loggers
from kdcore.plugins import get_plugins


class Memo(Logger):
    """Keeps what it is given, in class attributes the test reads."""

    calls: list[tuple[str, object]] = []

    def __init__(self, run_dir: str, first_epoch: int, tag: str = "") -> None:
        Memo.calls.append(("init", (run_dir, first_epoch, tag)))

    def log_config(self, config):
        Memo.calls.append(("config", config))

    def log_epoch(self, row):
        Memo.calls.append(("epoch", row))

    def log_summary(self, summary):
        Memo.calls.append(("summary", summary))

    def close(self):
        Memo.calls.append(("close", None))


class MemoPlugin:
    @kdcore.hookimpl
    def kdcore_loggers(self):
        return [kdcore.Component("memo", Memo, "test logger")]


@pytest.fixture
def memo_plugin():
    loaded = get_plugins()
    loaded.register(MemoPlugin(), "memo")
    Memo.calls.clear()
    yield
    loaded.pm.unregister(name="memo")
    loaded.status.pop("memo", None)
    loaded.in_process.remove("memo")


def test_flat_metrics_names_nested_numbers_with_slashes() -> None:
    row = {"epoch": 3, "lr": 0.1, "train": {"kd": 0.5, "skipped": True}, "student": {"test": {"top1": 80.0}},
           "run_dir": "x"}
    assert flat_metrics(row) == {"lr": 0.1, "train/kd": 0.5, "student/test/top1": 80.0}


def test_a_failing_tracker_is_dropped_with_one_warning_and_jsonl_goes_on(tmp_path) -> None:
    class Broken(Logger):
        def log_epoch(self, row):
            raise ConnectionError("server gone")

    said: list[str] = []
    loggers = Loggers([("jsonl", JsonlLogger(str(tmp_path))), ("broken", Broken())], said.append)
    loggers.log_epoch({"epoch": 1})
    loggers.log_epoch({"epoch": 2})
    assert said == ["warning: logger broken failed in log_epoch (ConnectionError: server gone); "
                    "it is dropped for the rest of the run"]
    assert [json.loads(l)["epoch"] for l in open(tmp_path / "metrics.jsonl")] == [1, 2]


def test_metrics_jsonl_errors_stop_the_run(tmp_path) -> None:
    loggers = Loggers([("jsonl", JsonlLogger(str(tmp_path / "missing")))])
    with pytest.raises(FileNotFoundError):
        loggers.log_epoch({"epoch": 1})


def test_an_unknown_logger_names_its_key(tmp_path) -> None:
    config = load_config({}, ["trainer.loggers=[jsonl, tensorbaord]"])
    with pytest.raises(UserError, match=r"trainer.loggers\[1\]: unknown logger 'tensorbaord'"):
        open_loggers(config, str(tmp_path), 1)


@pytest.mark.fashion
def test_a_plugin_logger_gets_config_every_epoch_and_summary(tmp_path, tiny, memo_plugin) -> None:
    result = CliRunner().invoke(main, ["run", "--output-dir", str(tmp_path), *[
        a for i in [*tiny, "trainer.epochs=2", "trainer.loggers=[{type: memo, tag: t}]"]
        for a in ("--set", i)]], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    run_dir = result.output.strip().splitlines()[-1][len("run dir: "):]
    kinds = [kind for kind, _ in Memo.calls]
    assert kinds == ["init", "config", "epoch", "epoch", "summary", "close"]
    assert Memo.calls[0][1] == (run_dir, 1, "t")
    assert Memo.calls[1][1]["trainer"]["loggers"] == [{"type": "memo", "tag": "t"}]
    rows = [json.loads(l) for l in open(os.path.join(run_dir, "metrics.jsonl"))]
    assert [c[1] for c in Memo.calls if c[0] == "epoch"] == rows  # what metrics.jsonl holds
    assert {"task", "kd", "loss"} <= set(rows[0]["train"]) and "lr" in rows[0]
    assert Memo.calls[4][1] == json.load(open(os.path.join(run_dir, "summary.json")))
