"""One end-to-end check for a plugin's preset: a real ``kdcore run`` on a slice of the data.

    from kdcore.testing import run_preset

    def test_preset_runs(tmp_path):
        summary = run_preset("kdcore_plugin_rkd", "fashion_mnist.yaml", tmp_path)
        assert "rkd" in summary["last_train"]

The run goes through the installed ``kdcore`` command in a subprocess (the way users run it),
on 256 training and 256 test images for one epoch, with a one-epoch teacher. Teachers are cached
in ``$KDCORE_CACHE_DIR`` when the test session sets it, else under ``tmp_path``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path
from typing import Any

TINY_SETS = ("data.train_limit=256", "data.test_limit=256", "trainer.epochs=1",
             "teachers.0.train.epochs=1", "teachers.0.train.train_limit=256", "trainer.progress=false")


def default_job_differences(preset: Path | str) -> list[str]:
    """The keys in which a preset differs from the default job outside its distill points.

    Presets that keep the default job's data, student, schedule, trainer and teacher blocks share
    its cached teacher (the cache is keyed by the teacher's recipe) and compare cleanly with it.
    """
    import yaml

    default = yaml.safe_load((resources.files("kdcore") / "presets" / "teacher_student.yaml").read_text())
    mine = yaml.safe_load(Path(preset).read_text())
    keys = [k for k in ("data", "student", "optimizer", "schedule", "trainer", "seed")
            if mine.get(k) != default.get(k)]
    keys += [f"teachers[0].{k}" for k in ("name", "type", "checkpoint", "train")
             if mine["teachers"][0].get(k) != default["teachers"][0].get(k)]
    return keys


def kdcore_command() -> list[str]:
    exe = shutil.which("kdcore")
    return [exe] if exe else [sys.executable, "-m", "kdcore"]


def run_preset(package: str, preset: str, tmp_path: Path | str, *, sets: tuple[str, ...] = TINY_SETS,
               extra: tuple[str, ...] = (), algo: str | None = None, timeout: int = 600) -> dict[str, Any]:
    """Run ``<package>/presets/<preset>`` and return its summary.json, plus ``run_dir`` and
    ``last_train`` (the last epoch's loss terms from metrics.jsonl). Fails with the run's stderr."""
    tmp_path = Path(tmp_path)
    path = resources.files(package) / "presets" / preset
    cmd = kdcore_command() + ["run", "--config", str(path), "--output-dir", str(tmp_path / "runs")]
    if algo:
        cmd += ["--algo", algo]
    for item in (*sets, *extra):
        cmd += ["--set", item]
    env = {**os.environ}
    env.setdefault("KDCORE_CACHE_DIR", str(tmp_path / "cache"))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"kdcore run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("run dir: "), proc.stdout[-2000:]
    run_dir = Path(last[len("run dir: "):])
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    summary["run_dir"] = str(run_dir)
    summary["last_train"] = rows[-1]["train"] if rows else {}
    summary["stdout"] = proc.stdout
    return summary
