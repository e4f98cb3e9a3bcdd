"""What a user sees: a log file that reads line by line, Ctrl-C and SIGTERM that say how to
resume (and leave something resumable), teachers with their own data settings."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.fashion

QUICK = ["data.train_limit=256", "data.test_limit=256", "trainer.epochs=1", "data.batch_size=64",
         "teachers.0.train.epochs=1", "teachers.0.train.train_limit=256", "trainer.threads=1"]


def command(out: Path, *items: str, resume: Path | None = None) -> list[str]:
    args = [sys.executable, "-m", "kdcore", "run"]
    args += ["--resume", str(resume)] if resume else ["--output-dir", str(out)]
    return args + [a for item in items for a in ("--set", item)]


def run_to_file(out: Path, log: Path, *items: str, resume: Path | None = None) -> int:
    with open(log, "w") as f:  # stdout and stderr into one file, as `> log 2>&1`
        return subprocess.run(command(out, *items, resume=resume), stdout=f, stderr=subprocess.STDOUT,
                              timeout=300).returncode


def test_a_log_file_gets_plain_lines_not_bar_redraws(tmp_path) -> None:
    """trainer.progress is on (the default) but stderr is a file: no tqdm redraws."""
    log = tmp_path / "log"
    assert run_to_file(tmp_path, log, *QUICK, "trainer.epochs=2") == 0, log.read_text()
    text = log.read_text()
    assert "\r" not in text
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 300, max(lines, key=len)
    assert sum(line.startswith("epoch ") for line in lines) == 2  # one plain line per epoch
    assert lines[-1].startswith("run dir: ")


def stop_when(out: Path, marker: str, sig: int, *items: str) -> tuple[int, str]:
    """Start a run, send ``sig`` once ``marker`` is printed; (exit code, all output)."""
    proc = subprocess.Popen(command(out, *items), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, bufsize=1, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    seen = []
    assert proc.stdout is not None
    for line in proc.stdout:
        seen.append(line)
        if marker in line:  # printed just before the work it announces starts
            proc.send_signal(sig)
            break
    rest, _ = proc.communicate(timeout=120)
    return proc.returncode, "".join(seen) + rest


@pytest.mark.e2e
def test_sigterm_during_teacher_training_leaves_a_resumable_run(tmp_path) -> None:
    # a teacher seed no other test uses: it is trained here, on enough images to be stopped
    items = [*QUICK, "teachers.0.train.seed=987", "teachers.0.train.train_limit=6000",
             "teachers.0.train.epochs=3", "trainer.progress=false"]
    code, output = stop_when(tmp_path, "training cnn_teacher", signal.SIGTERM, *items)
    assert code == 143, output
    run_dir = next(p for p in tmp_path.iterdir() if p.is_dir())
    assert f"kdcore: stopped by SIGTERM; continue with: kdcore run --resume {run_dir}" in output
    assert not (run_dir / "summary.json").exists()

    log = tmp_path / "resumed.log"
    assert run_to_file(tmp_path, log, resume=run_dir) == 0, log.read_text()
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert summary["epochs"] == 1 and len(rows) == 1
    # "seconds" is this invocation's wall time; "train_seconds" the epochs' training time
    assert summary["train_seconds"] == pytest.approx(sum(r["train"]["seconds"] for r in rows), abs=0.01)
    assert summary["seconds"] > summary["train_seconds"]


@pytest.mark.e2e
def test_ctrl_c_names_the_real_run_dir(tmp_path) -> None:
    code, output = stop_when(tmp_path, "run dir:", signal.SIGINT, *QUICK, "trainer.epochs=50",
                             "trainer.progress=false")
    assert code == 130, output
    run_dir = next(p for p in tmp_path.iterdir() if p.is_dir())
    assert f"kdcore: stopped by Ctrl-C; continue with: kdcore run --resume {run_dir}" in output
    assert "Traceback" not in output


@pytest.mark.e2e
def test_quick_runs_reuse_the_teacher_and_say_why_one_is_trained(tmp_path) -> None:
    from click.testing import CliRunner

    from kdcore.cli import main

    def run(*items: str) -> str:
        result = CliRunner().invoke(main, ["run", "--output-dir", str(tmp_path), *[
            a for i in items for a in ("--set", i)]], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output

    base = [*QUICK, "trainer.progress=false", "teachers.0.train.seed=55"]
    first = run(*base)
    assert "training cnn_teacher" in first  # and why: none cached yet, or which setting differs
    assert "cached yet" in first or "train.seed" in first, first
    # the student's quick-run settings do not touch the teacher's recipe
    again = run(*[i for i in base if not i.startswith(("data.train_limit", "data.batch_size"))],
                "data.train_limit=128", "data.batch_size=32")
    assert "using cached checkpoint" in again and "training cnn_teacher" not in again
    # the teacher's own settings do, and the line says which changed
    other = run(*base, "teachers.0.train.train_limit=192")
    assert "train.train_limit 256 -> 192" in other


@pytest.mark.parametrize("item, expected", [
    ("teachers.0.distill.0.head.losses.0.temperature=two",
     "teachers[0].distill[0].head.losses[0].temperature: expected a number, got 'two'"),
    ("teachers.0.distill.0.head.losses.0.temprature=3", "(did you mean 'temperature'?)"),
    ("student.type=nope", "student: unknown model 'nope'"),
    ("data.type=mnist", "data.root: required, missing"),
])
def test_print_config_checks_parameters_as_the_run_does(item, expected) -> None:
    from click.testing import CliRunner

    from kdcore.cli import main

    result = CliRunner().invoke(main, ["run", "--print-config", "--set", item])
    assert result.exit_code == 2 and expected in result.output, result.output
    assert "algorithm:" not in result.output  # nothing printed as if it were valid


def test_print_config_of_the_default_job_passes() -> None:
    from click.testing import CliRunner

    from kdcore.cli import main

    result = CliRunner().invoke(main, ["run", "--print-config"])
    assert result.exit_code == 0 and "temperature: 4.0" in result.output, result.output
