"""The benchmark scripts still run: a GPU session is short and rare, and a script that breaks
there wastes it. Tiny settings; these assert the output's shape and the arms' parity, not speed."""

from __future__ import annotations

import importlib.util
import json
import os
import sys

import pytest

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, os.path.join(BENCHMARKS, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_overhead_runs_every_arm_and_checks_parity(tmp_path, capsys):
    overhead = load("overhead")
    out = tmp_path / "overhead.json"
    assert overhead.main(["--methods", "kd,ofd", "--steps", "4", "--block", "3", "--warmup", "1",
                          "--threads", "1", "--progress", "--control",
                          "--set", "data.train_limit=256", "--set", "data.batch_size=8",
                          "--json", str(out)]) == 0
    results = json.loads(out.read_text())["results"]
    assert [r["method"] for r in results] == ["kd", "ofd"]
    for r in results:
        assert r["parity"]["loss_rel_diff"] <= 1e-4
        for key in ("ratio", "ratio_kdcore+bar", "ratio_hand+again"):
            low, high = r[f"{key}_blocks"]["ci95"]
            assert 0 < low <= r[f"{key}_blocks"]["median"] <= high
    printed = capsys.readouterr().out
    assert "control: hand against itself" in printed and "kdcore with progress bar" in printed


def test_bootstrap_interval_brackets_the_median_and_is_repeatable():
    overhead = load("overhead")
    values = [1.0, 1.1, 0.9, 1.05, 0.95, 1.2, 1.0]
    low, high = overhead.bootstrap_median(values)
    assert low <= 1.0 <= high
    assert (low, high) == overhead.bootstrap_median(values)
    assert overhead.bootstrap_median([2.0] * 5) == (2.0, 2.0)


def test_speed_switches_reads_each_run_and_keeps_the_rows_order(tmp_path, monkeypatch, capsys):
    """Rows run in the order --rows gives them (two calls can alternate arms in opposite orders),
    --set reaches every run, and each run's figures come from its metrics.jsonl and summary.json."""
    module = load("speed_switches")
    calls = []

    def fake_run(cmd, **kwargs):
        run_dir = tmp_path / f"run{len(calls)}"
        run_dir.mkdir()
        calls.append(cmd)
        rows = [{"train": {"images_per_second": v, "seconds": 2.0}} for v in (100.0, 300.0, 500.0)]
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (run_dir / "summary.json").write_text(json.dumps(
            {"epochs": 3, "train_seconds": 6.0, "student": {"top1": 88.81}, "teacher": {"top1": 90.17}}))
        return module.subprocess.CompletedProcess(cmd, 0, f"run dir: {run_dir}\n", "")

    monkeypatch.setattr(module.subprocess, "run", fake_run)
    monkeypatch.setattr(sys, "argv", ["speed_switches.py", "--device", "cpu", "--no-warmup", "--repeats", "1",
                                      "--rows", "teacher as trained,baseline (fp32)",
                                      "--set", "trainer.threads=1"])
    module.main()
    assert "trainer.teacher_fold_bn=false" in calls[0] and "trainer.teacher_fold_bn=false" not in calls[1]
    assert all("trainer.threads=1" in c for c in calls)
    out = capsys.readouterr().out
    assert "| teacher as trained | 400 | 1.00x | 2.0 |" in out and "| 88.81 |" in out
