"""A run killed with SIGKILL and continued with ``kdcore run --resume RUN_DIR`` ends with exactly
the metrics of an uninterrupted run (same seed, CPU, every digit), whatever the kill point:

* during a pre-training stage (no checkpoint yet: the resume starts over in the same run dir),
* in the middle of writing a checkpoint, after the epoch's metrics row was appended (the torn
  temp file must be ignored and the orphan metrics row dropped),
* at an arbitrary moment mid-epoch, by a SIGKILL from outside (steps after the last
  ``trainer.checkpoint_every`` checkpoint are replayed).

The three kills hit one run in turn (each resume is killed again), which also shows that resumes
compose; a subprocess start costs seconds, so one chain is cheaper than three runs.

The killed runs are real processes started from a small driver script that registers a test-only
loss (``kdrel_mse``: logits MSE with a one-epoch pre-training stage, drawing from the torch and
Python RNGs at every step, so unrestored RNG states would show) and can SIGKILL itself at a
chosen point. The reference run and the last resume run in-process with the same plugin.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner

from kdcore.cli import main
from kdcore.plugins import Plugins
from kdcore.testing import using_plugins

from cli_runs import small_fashion

pytestmark = [pytest.mark.fashion, pytest.mark.e2e]

DRIVER = '''
"""Test-only kdcore plugin plus a kill switch (tests/test_resume.py writes this file)."""
import os
import random
import signal
import sys
import time

import torch
import torch.nn.functional as F

import kdcore


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class StagedMSE(kdcore.Loss):
    """MSE between randomly masked logits, with a pre-training stage of one epoch."""

    def __init__(self) -> None:
        super().__init__()
        self.stage_calls = 0

    def forward(self, student, teacher, **extra):
        time.sleep(float(os.environ.get("KDREL_SLOW", "0")))
        # draws from both global RNGs, so a resume that does not restore them ends elsewhere
        mask = (torch.rand_like(student) > 0.2).float()
        return (1.0 + random.random()) * F.mse_loss(student * mask, teacher * mask)

    def stages(self, head):
        def loss(student, teacher, **extra):
            self.stage_calls += 1
            if os.environ.get("KDREL_KILL") == f"stage:{self.stage_calls}":
                die()
            return F.mse_loss(student, teacher)
        return [kdcore.PreTraining("kdrel_warmup", 1, loss)]


@kdcore.hookimpl
def kdcore_losses():
    return [kdcore.Component("kdrel_mse", StagedMSE, "test-only: logits MSE with a stage")]


def kill_at_checkpoint_write(n: int) -> None:
    """SIGKILL at the n-th checkpoint write, after the temp file is complete, before the rename."""
    real, count = os.replace, [0]

    def replace(src, dst, *args, **kwargs):
        if str(dst).endswith("last.pt"):
            count[0] += 1
            if count[0] == n:
                die()
        return real(src, dst, *args, **kwargs)

    os.replace = replace


if __name__ == "__main__":
    kill = os.environ.get("KDREL_KILL", "")
    if kill.startswith("write:"):
        kill_at_checkpoint_write(int(kill.split(":")[1]))
    from kdcore.cli import main
    from kdcore.plugins import get_plugins

    get_plugins().register(sys.modules[__name__], "kdrel")
    main()
'''

#: 512 images / 64 = 8 steps per epoch, 2 epochs. Checkpoints (saves): #1 after the stage,
#: #2 at step 3, #3 at step 6, #4 at the end of epoch 1, #5 at step 9, #6 at 12, #7 at 15, #8 end.
SETS = ["data.train_limit=512", "data.test_limit=256", "trainer.epochs=2",
        "teachers.0.train.epochs=1", "teachers.0.train.train_limit=512", "data.batch_size=64", "trainer.progress=false",
        "trainer.checkpoint_every=3", "trainer.threads=1",
        ("teachers.0.distill.0.head.losses=[{type: kd, weight: 0.5, temperature: 4.0}, "
         "{type: kdrel_mse, weight: 0.01}]")]
TIMING = {"seconds", "train_seconds", "images_per_second", "run_dir"}


@dataclasses.dataclass
class Driver:
    script: Path  # run as a process: the plugin plus the kill switch
    module: Any  # the same file imported here, for in-process runs
    data_root: Path

    def args(self, output_dir: Path) -> list[str]:
        sets = [*SETS, f"data.root={self.data_root}"]
        return ["run", "--output-dir", str(output_dir)] + [a for s in sets for a in ("--set", s)]

    def invoke(self, cli_args: list[str]) -> Any:
        """``kdcore CLI_ARGS`` in-process, with the installed plugins plus the test-only one."""
        loaded = Plugins()
        loaded.register(self.module, "kdrel")
        with using_plugins(loaded):
            result = CliRunner().invoke(main, cli_args)
        assert result.exit_code == 0, (result.output, result.exception)
        return result

    def start(self, cli_args: list[str], **env: str) -> subprocess.Popen:
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **env}
        return subprocess.Popen([sys.executable, str(self.script), *cli_args], env=full_env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = small_fashion(tmp_path_factory.mktemp("fashion"), {"train": 512, "test": 256})
    folder = tmp_path_factory.mktemp("kdrel")
    (folder / "kdrel_driver.py").write_text(DRIVER)
    sys.path.insert(0, str(folder))
    try:
        import kdrel_driver

        yield Driver(folder / "kdrel_driver.py", kdrel_driver, root)
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop("kdrel_driver", None)


def only_run_dir(output_dir: Path) -> Path:
    (run_dir,) = [p for p in output_dir.iterdir() if p.is_dir()]
    return run_dir


def without_timing(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: without_timing(v) for k, v in obj.items() if k not in TIMING}
    if isinstance(obj, list):
        return [without_timing(v) for v in obj]
    return obj


def outcome(run_dir: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """summary.json and metrics.jsonl without wall-clock fields; floats as parsed from JSON."""
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    return without_timing(summary), without_timing(rows)


@pytest.fixture(scope="module")
def reference(driver: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, list]:
    """The uninterrupted run (it also trains and caches the teacher for the killed runs)."""
    out = tmp_path_factory.mktemp("reference")
    driver.invoke(driver.args(out))
    summary, rows = outcome(only_run_dir(out))
    assert len(rows) == 2 and rows[0]["train"]["kdrel_mse"] > 0 and summary["student"]["top1"] > 0
    return summary, rows


def finish_killed(proc: subprocess.Popen) -> str:
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL, f"the run was not killed:\n{output}"
    return output


def checkpoint_position(run_dir: Path) -> dict[str, Any]:
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    return state["position"] | {"metrics_rows": state["metrics_rows"]}


def kill_from_outside_mid_epoch_2(proc: subprocess.Popen, run_dir: Path) -> None:
    """SIGKILL ``proc`` as soon as a checkpoint taken inside epoch 2 appears (the run is slowed
    down, so the kill lands between that checkpoint and the next)."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            position = checkpoint_position(run_dir)
        except Exception:  # noqa: BLE001 - not there yet, or replaced while read: look again
            position = {}
        if position.get("epoch") == 1 and position.get("step_in_epoch", 0) > 0:
            proc.send_signal(signal.SIGKILL)
            return
        time.sleep(0.02)
    proc.kill()


def test_run_killed_three_times_resumes_to_identical_metrics(driver, reference, tmp_path) -> None:
    # 1. SIGKILL inside the pre-training stage: no checkpoint exists yet
    finish_killed(driver.start(driver.args(tmp_path), KDREL_KILL="stage:3"))
    run_dir = only_run_dir(tmp_path)
    assert (run_dir / "config.yaml").exists()
    assert not (run_dir / "checkpoints" / "last.pt").exists()

    # 2. resumed (starts over in the same run dir, stage included), then SIGKILL in the middle
    #    of checkpoint write #4: the epoch-1 metrics row is already appended, the temp file is
    #    complete but not renamed, so last.pt is still the step-6 checkpoint
    output = finish_killed(driver.start(["run", "--resume", str(run_dir)], KDREL_KILL="write:4"))
    assert "stage kdrel_warmup" in output and "resumed at" not in output
    assert list((run_dir / "checkpoints").glob(".kdcore-tmp-*.pt"))
    position = checkpoint_position(run_dir)
    assert (position["epoch"], position["step_in_epoch"], position["metrics_rows"]) == (0, 6, 0)
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 1

    # 3. resumed (the orphan metrics row is dropped, steps 6-7 replayed), then SIGKILL from
    #    outside at whatever moment follows the first checkpoint inside epoch 2
    proc = driver.start(["run", "--resume", str(run_dir)], KDREL_SLOW="0.1")
    kill_from_outside_mid_epoch_2(proc, run_dir)
    output = finish_killed(proc)
    assert "resumed at epoch 1, step 6" in output
    position = checkpoint_position(run_dir)
    assert position["epoch"] == 1 and 0 < position["step_in_epoch"] < 8
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 1

    # 4. resumed to the end: every metric equals the uninterrupted run's
    assert not (run_dir / "summary.json").exists()
    result = driver.invoke(["run", "--resume", str(run_dir)])
    assert f"resumed at epoch 2, step {position['step_in_epoch']}" in result.output
    summary, rows = outcome(run_dir)
    assert rows == reference[1]
    assert summary == reference[0]
