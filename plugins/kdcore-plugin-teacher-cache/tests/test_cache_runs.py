"""The cache in whole runs: refused where the teachers' outputs change every epoch (before any
teacher work, in one line), damaged files named with the remedy, a full disk in one line, and
under torchrun one process per machine fills it while the other waits."""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from kdcore.cli import main

from cli_runs import error_line, run_files, sets

pytestmark = pytest.mark.fashion


def invoke(args: list[str]) -> Any:
    return CliRunner().invoke(main, args)


# --- refused before any teacher work ------------------------------------------------------------

def test_teacher_cache_with_random_augmentation_is_refused_before_any_teacher_work(tmp_path) -> None:
    result = invoke(["run", "--teacher-cache", "--output-dir", str(tmp_path),
                     "--set", "data.augment=[{type: hflip}]"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "kdcore: error: trainer.teacher_cache: data.augment draws new random crops and flips every "
        "epoch, so the teacher's outputs change with them and cannot be cached; drop one of the two"]
    assert not list(tmp_path.iterdir())  # no run dir


def fake_cifar10(root: Path, per_batch: int = 3) -> None:
    """ROOT/cifar-10-batches-py: 5 training batches and a test batch of ``per_batch`` images."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        batch = {"batch_label": name, "labels": [(i + j) % 10 for j in range(per_batch)],
                 "data": rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8),
                 "filenames": [f"{name}_{j}.png" for j in range(per_batch)]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {"label_names": [f"class{k}" for k in range(10)], "num_cases_per_batch": per_batch,
            "num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))


def per_sample_cifar(tmp_path: Path) -> list[str]:
    fake_cifar10(tmp_path / "data")
    return ["--output-dir", str(tmp_path / "runs"), "--set", "data.type=cifar10",
            "--set", f"data.root={tmp_path / 'data'}", "--set", "data.params={in_memory: false}",
            "--set", "student.type=resnet8"]


def test_teacher_cache_on_a_per_sample_split_is_refused_before_any_teacher_work(tmp_path) -> None:
    result = invoke(["run", "--teacher-cache", *per_sample_cifar(tmp_path),
                     "--set", "teachers.0.type=resnet8"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "kdcore: error: trainer.teacher_cache needs a deterministic in-memory training split; this "
        "data set goes through per-sample transforms (which may be random), so its teacher outputs "
        "can change every epoch. Turn trainer.teacher_cache off"]


def test_teacher_cache_on_a_per_sample_split_without_teachers_is_ignored(tmp_path) -> None:
    # a student-only baseline in a sweep that passes --teacher-cache to every method
    result = invoke(["run", "--algo", "vanilla", "--teacher-cache", *per_sample_cifar(tmp_path),
                     "--set", "data.batch_size=5", "--set", "trainer.epochs=1",
                     "--set", "trainer.progress=false"])
    assert result.exit_code == 0, result.output


# --- damaged files and a full disk -------------------------------------------------------------

@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return run_files(tmp_path_factory.mktemp("cache-faults"))


def cache_run(files: dict[str, Path], tmp_path: Path, teacher: Path) -> Any:
    return invoke(["run", "--output-dir", str(tmp_path / "runs"), *sets(
        files, "trainer.epochs=1", "trainer.teacher_cache=true", f"teachers.0.checkpoint={teacher}")])


def damage_npy(path: Path, how: str) -> None:
    raw = bytearray(path.read_bytes())
    header = raw.index(b"\n") + 1  # the .npy header ends in a newline, padded to 64 bytes
    if how == "exponent-bit":
        raw[header + 4 * 10 + 3] ^= 0x40  # the 11th float32's exponent: a value off by ~2^64
    elif how == "zeroed-rows":
        raw[header: header + 4 * 500] = bytes(4 * 500)
    elif how == "truncated":
        del raw[len(raw) // 2:]
    elif how == "shrunk-header":
        raw[:header] = raw[:header].replace(b"(256,", b"(255,")
    elif how == "bad-magic":
        raw[:6] = b"NOTNPY"
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("how", ["exponent-bit", "zeroed-rows", "truncated", "shrunk-header",
                                 "bad-magic", "deleted"])
def test_a_damaged_teacher_output_cache_file_is_named_and_refilled_once_deleted(files, tmp_path, how) -> None:
    teacher = tmp_path / "teacher.pt"
    shutil.copy(files["teacher"], teacher)
    assert cache_run(files, tmp_path, teacher).exit_code == 0
    (folder,) = [p for p in (tmp_path / "teacher-outputs").iterdir() if p.is_dir()]
    npy = folder / "0.npy"
    if how == "deleted":
        npy.unlink()
    else:
        damage_npy(npy, how)
    line = error_line(cache_run(files, tmp_path, teacher), 2)
    assert f"teacher teacher: output cache file {npy} is " in line
    assert f"delete the folder {folder} and run again: it is filled again" in line
    shutil.rmtree(folder)
    result = cache_run(files, tmp_path, teacher)
    assert result.exit_code == 0 and "caching its outputs" in result.output


def test_a_full_disk_while_filling_the_cache_is_one_line_and_leaves_nothing(files, tmp_path, monkeypatch) -> None:
    import errno

    from kdcore_plugin_teacher_cache import teacher_cache

    def full(self: Any, data: bytes) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(teacher_cache._NpyWriter, "write", full)
    teacher = tmp_path / "teacher.pt"
    shutil.copy(files["teacher"], teacher)
    line = error_line(cache_run(files, tmp_path, teacher), 2)
    assert f"no space left to write its output cache in {tmp_path / 'teacher-outputs'}" in line
    assert not [p for p in (tmp_path / "teacher-outputs").iterdir() if p.is_dir()]


# --- torchrun ----------------------------------------------------------------------------------

SETS = ["data.train_limit=512", "data.test_limit=256", "teachers.0.train.epochs=1",
        "teachers.0.train.train_limit=512", "trainer.progress=false", "data.batch_size=64", "trainer.threads=1"]


@pytest.mark.e2e
def test_the_cache_is_filled_once_while_the_other_rank_waits_past_the_runs_timeout(tmp_path) -> None:
    worker = os.path.join(os.path.dirname(__file__), "fixtures", "ddp_cache_worker.py")
    env = {**os.environ, "KDCORE_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    args = ["run", "--output-dir", str(tmp_path / "two")]
    args += [a for item in [*SETS, "trainer.epochs=1", "trainer.teacher_cache=true"] for a in ("--set", item)]
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           worker, str(tmp_path), *args], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.glob("filled-by-*")) == ["filled-by-0"]  # LOCAL_RANK 0 only
    assert "student top1" in proc.stdout
