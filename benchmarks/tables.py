"""What the table scripts share: run one config as a real ``kdcore run`` subprocess, format a
mean and spread, and put a finished table between markers in docs/benchmarks.md."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

import yaml


def run_config(tag: str, cfg: dict[str, Any], out: str) -> tuple[subprocess.CompletedProcess, str | None, float]:
    """Write ``cfg`` to OUT/configs/TAG.yaml and run it (niced) into OUT/runs with its log in
    OUT/logs/TAG.log; returns the process, its run dir (``None`` if it failed) and wall seconds."""
    path = os.path.join(out, "configs", f"{tag}.yaml")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    os.makedirs(os.path.join(out, "logs"), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(cfg, f, sort_keys=False)
    cmd = [sys.executable, "-m", "kdcore", "run", "--config", path, "--output-dir",
           os.path.join(out, "runs"), "--name", tag]
    started = time.time()
    proc = subprocess.run(["nice", "-n", "10", *cmd], capture_output=True, text=True)
    wall = time.time() - started
    with open(os.path.join(out, "logs", f"{tag}.log"), "w", encoding="utf-8") as f:
        f.write(proc.stdout + proc.stderr)
    run_dir = None
    if proc.returncode == 0:
        run_dir = next(line[len("run dir: "):] for line in proc.stdout.splitlines() if line.startswith("run dir: "))
    return proc, run_dir, wall


def failure(tag: str, proc: subprocess.CompletedProcess) -> dict[str, Any]:
    return {"tag": tag, "error": (proc.stderr or proc.stdout).strip().splitlines()[-1:]}


def mean_std(values: list[float]) -> str:
    """compare's mean +- std (one implementation, kdcore-plugin-compare's), with "-" for no values."""
    from kdcore_plugin_compare.compare import mean_std as compare_mean_std

    return compare_mean_std(values) or "-"


def splice(report: str, path: str, start: str, end: str) -> None:
    """Put ``report`` between the markers of ``path`` (appended when missing)."""
    text = open(path, encoding="utf-8").read() if os.path.exists(path) else "# Benchmarks\n"
    if start not in text:
        text += f"\n{start}\n{end}\n"
    head, rest = text.split(start, 1)
    with open(path, "w", encoding="utf-8") as f:
        f.write(head + start + "\n\n" + report + "\n" + end + rest.split(end, 1)[1])
