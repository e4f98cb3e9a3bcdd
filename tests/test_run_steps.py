"""The run's steps around resuming: last.pt read once per resume, the advice for a damaged
student.pt of a finished run, every optimizer of an own-step algorithm saved and restored by
name, and the engine's import graph (no upward import into the assembly or the front ends)."""

from __future__ import annotations

import ast
import datetime
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from kdcore.engine.resume import CHECKPOINT, STUDENT_REMEDY, finished

from cli_runs import invoke_sets, only_run_dir, run_files, sets


def test_a_finished_runs_student_pt_with_python_objects_is_said_to_be_written_again(tmp_path) -> None:
    """student.pt is the run's own output: the advice is not to re-save it by hand."""
    (tmp_path / "summary.json").write_text(json.dumps({"epochs": 1}))
    torch.save({"w": torch.zeros(1), "when": datetime.date(2020, 1, 1)}, tmp_path / "student.pt")
    said: list[str] = []
    last = {"position": {"epoch": 1, "step_in_epoch": 0}}
    assert not finished(str(tmp_path), 1, last, said.append)
    (line,) = said
    assert line.startswith("the run is complete, but student.pt contains Python objects")
    assert STUDENT_REMEDY in line and "re-save" not in line and line.count(CHECKPOINT) == 1
    torch.save({"w": torch.full((1,), float("nan"))}, tmp_path / "student.pt")
    said.clear()
    assert not finished(str(tmp_path), 1, last, said.append)
    assert said == [f"the run is complete, but student.pt holds NaN/Inf (w); {STUDENT_REMEDY}"]
    torch.save({"w": torch.zeros(1)}, tmp_path / "student.pt")
    assert finished(str(tmp_path), 1, last, said.append) and len(said) == 1
    assert not finished(str(tmp_path), 1, None, said.append)  # no last.pt: not finished


@pytest.mark.fashion
def test_a_resume_reads_last_pt_once(tmp_path, monkeypatch) -> None:
    files = run_files(tmp_path / "files")
    args = sets(files, "trainer.epochs=1")
    values = [a for a in args if a != "--set"]
    assert invoke_sets(tmp_path, *values).exit_code == 0
    run_dir = only_run_dir(tmp_path / "runs")
    real, loads = torch.load, []

    def counting(path: Any, *a: Any, **k: Any) -> Any:
        if str(path).endswith(os.path.join("checkpoints", "last.pt")):
            loads.append(path)
        return real(path, *a, **k)

    monkeypatch.setattr(torch, "load", counting)
    from click.testing import CliRunner

    from kdcore.cli import main

    done = CliRunner().invoke(main, ["run", "--resume", str(run_dir)])
    assert done.exit_code == 0 and "the run is complete" in done.output, done.output
    assert len(loads) == 1
    loads.clear()
    longer = CliRunner().invoke(main, ["run", "--resume", str(run_dir), "--set", "trainer.epochs=2"])
    assert longer.exit_code == 0 and "resumed at epoch 2" in longer.output, longer.output
    assert len(loads) == 1
