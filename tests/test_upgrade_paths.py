"""A run that kdcore 0.1.7 (git 616193a) started and that was killed mid-epoch resumes with this
kdcore to the metrics the old code's own uninterrupted run wrote, and a finished run extended
with ``--set trainer.epochs=3`` ends where the old code's extension ended.

``fixtures/run_0_1_7`` is the killed run as the old code left it (``config.yaml``,
``metrics.jsonl``, ``checkpoints/last.pt`` after 6 of 8 steps; its README says how it was made)
with its teacher (a random ``cnn_student``); ``expected.json`` holds the old code's rows and a
digest of its ``student.pt``. Both are compared digit for digit under the torch that wrote them,
and to float tolerance under another (other kernels round differently)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner

from kdcore.cli import main

from cli_runs import small_fashion

pytestmark = pytest.mark.fashion

FIXTURE = Path(__file__).parent / "fixtures" / "run_0_1_7"
TIMING = ("images_per_second", "seconds")


def rows(run_dir: Path) -> list[dict[str, Any]]:
    """metrics.jsonl without the timings."""
    out = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        row["train"] = {k: v for k, v in row["train"].items() if k not in TIMING}
        out.append(row)
    return out


def digest(path: Path) -> str:
    weights = torch.load(path, weights_only=True)
    h = hashlib.sha256()
    for key in sorted(weights):
        h.update(key.encode())
        h.update(weights[key].contiguous().numpy().tobytes())
    return h.hexdigest()


def same_as_old(run_dir: Path, expected: dict[str, Any], torch_version: str) -> None:
    if torch.__version__ == torch_version:
        assert rows(run_dir) == expected["rows"]
        assert digest(run_dir / "student.pt") == expected["student_sha256"]
    else:
        assert rows(run_dir) == pytest.approx(expected["rows"], rel=1e-4)


def test_a_run_killed_under_0_1_7_resumes_and_extends_as_the_old_code_did(tmp_path: Path) -> None:
    expected = json.loads((FIXTURE / "expected.json").read_text())
    root = small_fashion(tmp_path / "fashion", {"train": 256, "test": 128})  # what it trained on
    run_dir = tmp_path / "run"
    shutil.copytree(FIXTURE, run_dir, ignore=shutil.ignore_patterns("teacher.pt", "expected.json", "README.md"))
    moved = ["--set", f"data.root={root}", "--set", f"teachers.0.checkpoint={FIXTURE / 'teacher.pt'}"]

    result = CliRunner().invoke(main, ["run", "--resume", str(run_dir), *moved])
    assert result.exit_code == 0, (result.output, result.exception)
    assert "resumed at epoch 2, step 2" in result.output  # from the old last.pt, not from scratch
    same_as_old(run_dir, expected["finished"], expected["torch"])

    result = CliRunner().invoke(main, ["run", "--resume", str(run_dir), *moved, "--set", "trainer.epochs=3"])
    assert result.exit_code == 0, (result.output, result.exception)
    same_as_old(run_dir, expected["extended"], expected["torch"])
