"""Fault injection: every fault of issue #19 (a hostile tester's trial), repeated as a test.

Each case ends in one of three ways, and docs/reliability.md's fault table lists which: the run
goes on correctly, it stops with one ``kdcore: error:`` line (exit 2; exit 3 for NaN/Inf), or it
is refused before anything is changed. Never a traceback, a signal, or silently wrong data.

Runs use a 256-image slice of Fashion-MNIST (4 steps an epoch) and a randomly initialised
teacher checkpoint, so no test trains a teacher unless it says so. The faults are test-only
losses of this module, registered in-process.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import kdcore
from kdcore.engine.checkpoint import load_checkpoint, run_lock

from cli_runs import error_line, invoke_with, losses, only_run_dir, run_files, sets

pytestmark = pytest.mark.fashion


# --- test-only losses ------------------------------------------------------------------------

class BadAt(kdcore.Loss):
    """0, except ``value`` ("nan"/"inf") at the global steps in ``steps`` (all steps from
    ``start`` on, when given)."""

    def __init__(self, steps: list[int] | None = None, start: int | None = None,
                 value: str = "nan") -> None:
        super().__init__()
        self.steps, self.start, self.value = set(steps or []), start, float(value)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, **extra: Any) -> torch.Tensor:
        step = extra["step"]
        bad = step in self.steps or (self.start is not None and step >= self.start)
        return (student * 0).sum() + (self.value if bad else 0.0)


class NaNGradientAt(kdcore.Loss):
    """A finite loss (0) whose gradient is NaN at the global steps ``steps``: the weights turn
    NaN while every loss read so far was finite (sqrt at 0)."""

    def __init__(self, steps: list[int]) -> None:
        super().__init__()
        self.steps = set(steps)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, **extra: Any) -> torch.Tensor:
        if extra["step"] not in self.steps:
            return (student * 0).sum()
        return torch.sqrt(((student - student.detach()) ** 2).sum(1)).mean()


class RemovesRunDir(kdcore.Loss):
    """0; at global step ``step`` it deletes every folder in ``output_dir`` (the run dir)."""

    def __init__(self, output_dir: str, step: int) -> None:
        super().__init__()
        self.output_dir, self.step = output_dir, step

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, **extra: Any) -> torch.Tensor:
        if extra["step"] == self.step:
            for name in os.listdir(self.output_dir):
                shutil.rmtree(os.path.join(self.output_dir, name))
        return (student * 0).sum()


def exploding_model(num_classes: int = 10, in_channels: int = 1) -> torch.nn.Module:
    """A model factory with a bug: it raises a RuntimeError, not a UserError."""
    raise RuntimeError("shape [3, 0] is invalid for input of size 7")


@kdcore.hookimpl
def kdcore_models() -> list[kdcore.Component]:
    return [kdcore.Component("kdfault_exploding", exploding_model, "test-only: raises")]


@kdcore.hookimpl
def kdcore_losses() -> list[kdcore.Component]:
    return [kdcore.Component("kdfault_bad", BadAt, "test-only: NaN/Inf at chosen steps"),
            kdcore.Component("kdfault_nan_grad", NaNGradientAt, "test-only: NaN gradient"),
            kdcore.Component("kdfault_rmdir", RemovesRunDir, "test-only: deletes the run dir")]


# --- helpers -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return run_files(tmp_path_factory.mktemp("faults"))


def invoke(cli_args: list[str]) -> Any:
    """``kdcore CLI_ARGS`` in-process, with the installed plugins plus this module's losses."""
    return invoke_with(sys.modules[__name__], "kdfault", cli_args)


def finite(state: dict[str, torch.Tensor]) -> bool:
    return all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


@pytest.fixture(scope="module")
def stopped(files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run stopped by an Inf at step 5 (epoch 2), checkpoints every 2 steps: last.pt is the
    step-4 one, metrics.jsonl has 1 row. Tests work on copies (:func:`copy_of`)."""
    out = tmp_path_factory.mktemp("stopped")
    result = invoke(["run", "--output-dir", str(out), *sets(
        files, "trainer.checkpoint_every=2", losses("{type: kdfault_bad, steps: [5], value: inf}"))])
    assert result.exit_code == 3, result.output
    return only_run_dir(out)


@pytest.fixture(scope="module")
def finished(stopped: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The stopped run, resumed past its bad batch to the end."""
    run_dir = tmp_path_factory.mktemp("finished") / stopped.name
    shutil.copytree(stopped, run_dir)
    result = invoke(["run", "--resume", str(run_dir), "--set", "trainer.on_nonfinite=skip"])
    assert result.exit_code == 0, result.output
    return run_dir


def copy_of(run_dir: Path, tmp_path: Path) -> Path:
    target = tmp_path / run_dir.name
    shutil.copytree(run_dir, target)
    return target


def resume_skipping(run_dir: Path, *extra: str) -> Any:
    return invoke(["run", "--resume", str(run_dir), "--set", "trainer.on_nonfinite=skip", *extra])


# --- one process per run directory ---------------------------------------------------------------

def test_a_second_process_on_a_run_dir_is_refused_naming_the_holder(stopped, tmp_path) -> None:
    run_dir = copy_of(stopped, tmp_path)
    before = (run_dir / "metrics.jsonl").read_text()
    with run_lock(str(run_dir)):  # what a first `kdcore run --resume` holds while it trains
        line = error_line(resume_skipping(run_dir), 2)
    assert (f"run dir {run_dir} is in use by kdcore process {os.getpid()} on "
            f"{socket.gethostname()}") in line
    assert (run_dir / "metrics.jsonl").read_text() == before
    assert not (run_dir / "summary.json").exists()
    assert resume_skipping(run_dir).exit_code == 0  # released with its holder


def test_a_lock_file_naming_a_dead_process_is_taken_over(stopped, tmp_path) -> None:
    run_dir = copy_of(stopped, tmp_path)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (run_dir / ".kdcore-run.lock").write_text(f"kdcore process {gone.pid} on {socket.gethostname()}\n")
    result = resume_skipping(run_dir)
    assert result.exit_code == 0, result.output
    assert f"named process {gone.pid}, which is no longer running; taken over" in result.output
    assert (run_dir / ".kdcore-run.lock").read_text() == ""  # released at the end


# --- NaN / Inf: nothing non-finite is kept --------------------------------------------------------

def test_weights_that_turn_nan_after_a_finite_loss_are_never_checkpointed(files, tmp_path) -> None:
    """The loss of step 4 (epoch 2's first) is finite, its gradient NaN: with a checkpoint every
    step, the next save would be NaN weights; last.pt stays the good one and a resume works."""
    result = invoke(["run", "--output-dir", str(tmp_path), *sets(
        files, "trainer.checkpoint_every=1", losses("{type: kdfault_nan_grad, steps: [4]}"))])
    line = error_line(result, 3)
    assert "the weights hold NaN/Inf after 5 steps" in line and "although the loss was finite" in line
    assert "the last good checkpoint is kept: checkpoints/last.pt, after 4 steps" in line
    run_dir = only_run_dir(tmp_path)
    state = load_checkpoint(str(run_dir / "checkpoints" / "last.pt"))
    assert state["position"]["global_step"] == 4 and finite(state["algorithm"])
    assert not (run_dir / "student.pt").exists()
    resumed = invoke(["run", "--resume", str(run_dir), "--set",
                      losses("{type: kdfault_nan_grad, steps: []}")])
    assert resumed.exit_code == 0, resumed.output
    assert "resumed at epoch 2, step 0" in resumed.output
    assert finite(torch.load(run_dir / "student.pt", weights_only=True))


def test_skip_stops_when_every_batch_of_an_epoch_is_skipped(files, tmp_path) -> None:
    result = invoke(["run", "--output-dir", str(tmp_path), *sets(
        files, "trainer.on_nonfinite=skip", losses("{type: kdfault_bad, start: 2}"))])
    line = error_line(result, 3)
    assert "trainer.on_nonfinite=skip skipped all 4 batches of train epoch 2" in line
    assert "the last good checkpoint is kept: checkpoints/last.pt, after 4 steps" in line
    run_dir = only_run_dir(tmp_path)
    assert not (run_dir / "student.pt").exists() and not (run_dir / "summary.json").exists()
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 1


def test_skip_stops_after_max_skipped_in_row(files, tmp_path) -> None:
    result = invoke(["run", "--output-dir", str(tmp_path), *sets(
        files, "trainer.on_nonfinite=skip", "trainer.max_skipped_in_row=3",
        losses("{type: kdfault_bad, steps: [2, 3, 4]}"))])  # across the epoch end
    line = error_line(result, 3)
    assert "skipped 3 batches in a row (trainer.max_skipped_in_row; the last: loss term" in line
    assert "at epoch 2, step 4" in line
    # NaN weights from a NaN gradient make every later loss NaN: skipped, then stopped; never exported
    out = tmp_path / "nan-weights"
    result = invoke(["run", "--output-dir", str(out), *sets(
        files, "trainer.on_nonfinite=skip", losses("{type: kdfault_nan_grad, steps: [1]}"))])
    line = error_line(result, 3)
    assert "the weights hold NaN/Inf after 4 steps" in line and "checkpoints/last.pt, after 0 steps" in line
    assert not (only_run_dir(out) / "student.pt").exists()


def test_a_teacher_whose_own_training_diverges_says_so(files, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("KDCORE_CACHE_DIR", str(tmp_path / "cache"))
    result = invoke(["run", "--output-dir", str(tmp_path), *sets(
        files, "teachers.0.checkpoint=null", "teachers.0.train.epochs=1",
        "teachers.0.train.optimizer.lr=1e12")])
    line = error_line(result, 3)
    assert "teacher 'teacher' (teachers[0]), trained before the student because it has no checkpoint: " \
           "its training diverged, " in line
    assert "nothing is cached for it and the student was not trained" in line
    assert "last good checkpoint" not in line and "on_nonfinite" not in line
    assert not list((tmp_path / "cache" / "teachers").glob("*.pt"))
    assert not list(tmp_path.glob("*/config.yaml"))  # nothing trained: no run dir left behind


# --- what a resume finds in the run directory ------------------------------------------------------

def test_a_finished_runs_damaged_student_pt_is_written_again_on_resume(finished, tmp_path) -> None:
    run_dir = copy_of(finished, tmp_path)
    good = torch.load(run_dir / "student.pt", weights_only=True)
    for damage in ("truncated", "nan"):
        if damage == "truncated":
            (run_dir / "student.pt").write_bytes((run_dir / "student.pt").read_bytes()[:200])
        else:
            torch.save({k: v * float("nan") if v.is_floating_point() else v for k, v in good.items()},
                       run_dir / "student.pt")
        result = invoke(["run", "--resume", str(run_dir)])
        assert result.exit_code == 0, result.output
        assert "the run is complete, but student.pt " in result.output and "nothing to do" not in result.output
        again = torch.load(run_dir / "student.pt", weights_only=True)
        assert all(torch.equal(again[k], good[k]) for k in good)
    assert "nothing to do" in invoke(["run", "--resume", str(run_dir)]).output


def test_last_pt_deleted_while_metrics_has_rows_is_refused(stopped, tmp_path) -> None:
    run_dir = copy_of(stopped, tmp_path)
    (run_dir / "checkpoints" / "last.pt").unlink()
    before = (run_dir / "metrics.jsonl").read_text()
    line = error_line(resume_skipping(run_dir), 2)
    assert "checkpoints/last.pt is missing but metrics.jsonl has 1 row" in line
    assert "move metrics.jsonl aside" in line
    assert (run_dir / "metrics.jsonl").read_text() == before
    (run_dir / "metrics.jsonl").rename(run_dir / "metrics.jsonl.old")  # the explicit start-over
    assert resume_skipping(run_dir).exit_code == 0
    assert [json.loads(l)["epoch"] for l in (run_dir / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_an_edited_metrics_row_is_written_again_from_the_checkpoints_record(stopped, tmp_path) -> None:
    run_dir = copy_of(stopped, tmp_path)
    original = (run_dir / "metrics.jsonl").read_text()
    row = json.loads(original)
    row["student"]["test"]["top1"] = 99.9  # would become the summary's best value
    (run_dir / "metrics.jsonl").write_text(json.dumps(row) + "\n")
    result = resume_skipping(run_dir)
    assert result.exit_code == 0, result.output
    assert "metrics.jsonl: row 1 differed from what checkpoints/last.pt recorded" in result.output
    assert (run_dir / "metrics.jsonl").read_text().splitlines()[0] == original.strip()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["student"]["best_test_top1"] != 99.9


@pytest.mark.parametrize("damage", [b"garbage\n", b"\xff\xfe\x00binary\n", "rename", "deleted"])
def test_a_damaged_metrics_file_is_written_again_from_the_record(stopped, tmp_path, damage) -> None:
    run_dir = copy_of(stopped, tmp_path)
    metrics = run_dir / "metrics.jsonl"
    original = metrics.read_text()
    if damage == "rename":
        metrics.write_text(original.replace('"epoch"', '"epoah"'))
    elif damage == "deleted":
        metrics.unlink()
    else:
        metrics.write_bytes(damage)
    result = resume_skipping(run_dir)
    assert result.exit_code == 0, result.output
    assert "written again from its record" in result.output
    assert metrics.read_text().splitlines()[0] == original.strip()


def test_a_metrics_file_that_is_a_directory_is_one_line(stopped, tmp_path) -> None:
    run_dir = copy_of(stopped, tmp_path)
    (run_dir / "metrics.jsonl").unlink()
    (run_dir / "metrics.jsonl").mkdir()
    line = error_line(resume_skipping(run_dir), 2)
    assert "metrics.jsonl is a directory, not the run's metrics file" in line
    assert not (run_dir / "config.yaml.1").exists()  # refused before anything changed


@pytest.mark.parametrize("damage, said", [
    (b"garbage\n", "line 1 is not a JSON object"),
    (b"\xff\xfe\x00binary\n", "line 1 is not text (binary damage)"),
    ("rename", "line 1 has no integer 'epoch'"),
])
def test_metrics_damaged_during_a_run_is_one_line_and_the_run_resumes(finished, tmp_path, damage, said) -> None:
    """Damage after the last checkpoint, before the summary is written: the summary cannot be
    made from the file, one line says why, and a resume writes the rows again and finishes."""
    run_dir = copy_of(finished, tmp_path)
    for name in ("summary.json", "student.pt"):
        (run_dir / name).unlink()
    metrics = run_dir / "metrics.jsonl"
    good = metrics.read_text()
    metrics.write_text(good.replace('"epoch"', '"epoah"') if damage == "rename" else "")
    if damage != "rename":
        metrics.write_bytes(damage + good.encode())
    from kdcore.engine.resume import metrics_rows
    from kdcore.errors import UserError

    with pytest.raises(UserError, match=said.replace("(", r"\(").replace(")", r"\)")):
        metrics_rows(str(metrics))
    result = invoke(["run", "--resume", str(run_dir)])
    assert result.exit_code == 0, result.output
    assert metrics.read_text() == good and (run_dir / "summary.json").exists()


def test_a_hand_edited_config_is_said_key_by_key_and_recorded(stopped, tmp_path) -> None:
    run_dir = copy_of(stopped, tmp_path)
    config = run_dir / "config.yaml"
    original = config.read_text()
    config.write_text(original.replace("lr: 0.1", "lr: 0.05").replace("on_nonfinite: stop", "on_nonfinite: skip"))
    result = invoke(["run", "--resume", str(run_dir)])
    assert result.exit_code == 0, result.output
    assert "config changed since checkpoints/last.pt: optimizer.lr 0.1 -> 0.05" in result.output
    assert "config changed since checkpoints/last.pt: trainer.on_nonfinite 'stop' -> 'skip'" in result.output
    assert "the config it was trained with is kept as config.yaml.1" in result.output
    assert "lr: 0.1\n" in (run_dir / "config.yaml.1").read_text()


def test_a_hand_edited_seed_is_refused(stopped, tmp_path) -> None:
    run_dir = copy_of(stopped, tmp_path)
    config = run_dir / "config.yaml"
    config.write_text(config.read_text().replace("seed: 0", "seed: 7"))
    line = error_line(resume_skipping(run_dir), 2)
    assert "--resume (config.yaml edited since checkpoints/last.pt): seed was 0, now 7" in line


def test_a_run_dir_removed_mid_run_stops_with_one_line(files, tmp_path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    result = invoke(["run", "--output-dir", str(out), *sets(
        files, "trainer.checkpoint_every=2", losses(f"{{type: kdfault_rmdir, output_dir: '{out}', step: 2}}"))])
    line = error_line(result, 2)
    assert "was removed while the run was going; stopped without writing there again" in line
    assert not list(out.iterdir())  # not recreated without its config.yaml


# --- image folders with bad files ----------------------------------------------------------------

def image_tree(root: Path, per_class: int = 4) -> None:
    from PIL import Image

    for split in ("train", "val"):
        for k, name in enumerate(["cat", "dog"]):
            (root / split / name).mkdir(parents=True)
            for j in range(per_class):
                Image.new("RGB", (20, 20), (100 * k, 20 * j, 50)).save(root / split / name / f"{j}.png")


def spoil(folder: Path) -> list[Path]:
    """A truncated PNG, an empty one, text named .png and a broken link, in train/cat."""
    good = (folder / "0.png").read_bytes()
    bad = [folder / "truncated.png", folder / "empty.png", folder / "text.png", folder / "link.png"]
    bad[0].write_bytes(good[: len(good) // 2])
    bad[1].write_bytes(b"")
    bad[2].write_text("not an image\n")
    bad[3].symlink_to(folder / "gone.png")
    return bad


def image_run(root: Path, out: Path, *extra: str) -> Any:
    return invoke(["run", "--algo", "vanilla", "--output-dir", str(out), "--set", "data.type=image_folder",
                   "--set", f"data.root={root}", "--set", "data.image_size=16", "--set", "data.batch_size=4",
                   "--set", "trainer.epochs=1", "--set", "trainer.progress=false",
                   "--set", "trainer.threads=1", *extra])


@pytest.mark.parametrize("which, said", [(0, "image file is truncated"), (1, "an empty file"),
                                         (2, "cannot identify image file"),
                                         (3, "a broken symbolic link to ")])
def test_an_unreadable_image_is_named_in_one_line(tmp_path, which, said) -> None:
    image_tree(tmp_path / "data")
    bad = spoil(tmp_path / "data" / "train" / "cat")
    for i, path in enumerate(bad):
        if i != which:
            path.unlink()
    line = error_line(image_run(tmp_path / "data", tmp_path / "out"), 2)
    assert f"image_folder: {bad[which]} cannot be read as an image (" in line and said in line
    assert "data.skip_bad_images: true" in line


def test_skip_bad_images_leaves_them_out_with_a_count(tmp_path) -> None:
    image_tree(tmp_path / "data")
    spoil(tmp_path / "data" / "train" / "cat")
    result = image_run(tmp_path / "data", tmp_path / "out", "--set", "data.skip_bad_images=true")
    assert result.exit_code == 0, result.output
    assert "warning: image_folder: skipped 4 unreadable files of 12 under " in result.output
    summary = json.loads((only_run_dir(tmp_path / "out") / "summary.json").read_text())
    assert summary["train_images"] == 8


# --- full disks ------------------------------------------------------------------------------------

@pytest.mark.parametrize("which", ["config.yaml", "last.pt", "summary.json", "teachers"])
def test_a_full_disk_is_one_line_naming_the_file_and_the_run_resumes(files, tmp_path, monkeypatch, which) -> None:
    """Writes of that file go to /dev/full (every write fails with ENOSPC); "teachers": the
    trained teacher's save into the teacher cache."""
    from kdcore.engine import checkpoint

    real = checkpoint.temp_file
    extra = ["teachers.0.checkpoint=null", "teachers.0.train.epochs=1"] if which == "teachers" else []
    if which == "teachers":
        monkeypatch.setenv("KDCORE_CACHE_DIR", str(tmp_path / "cache"))

    def full_for(folder: str, prefix: str = ".tmp-", suffix: str = "") -> tuple[int, str]:
        fd, path = real(folder, prefix, suffix)
        if which == "teachers":
            hit = folder.endswith("teachers")
        else:
            hit = suffix == ".pt" if which == "last.pt" else suffix == ".txt" and \
                (which == "config.yaml") != os.path.exists(os.path.join(folder, "student.pt"))
        if state["full"] and hit:
            os.close(fd)
            os.unlink(path)
            return os.open("/dev/full", os.O_WRONLY), path
        return fd, path

    state = {"full": True}
    monkeypatch.setattr(checkpoint, "temp_file", full_for)
    result = invoke(["run", "--output-dir", str(tmp_path), *sets(files, "trainer.epochs=1", *extra)])
    line = error_line(result, 2)
    assert "no space left to write " in line and which in line and "No space left on device" in line
    if which in ("config.yaml", "teachers"):  # no student trained: the run dir is removed again
        assert not [p for p in tmp_path.iterdir() if p.is_dir() and p.name != "cache"]
        return
    run_dir = only_run_dir(tmp_path)
    assert not [p for p in run_dir.rglob(".kdcore-tmp-*")]
    state["full"] = False
    result = invoke(["run", "--resume", str(run_dir)])
    assert result.exit_code == 0, result.output
    assert (run_dir / "summary.json").exists()


# --- absurd values -----------------------------------------------------------------------------

@pytest.mark.parametrize("setting, said", [
    ("trainer.threads=5000", "config key trainer.threads: 5000 is more than 4 per core of this machine"),
    ("trainer.threads=100000", "config key trainer.threads: 100000 is more than 4 per core"),
    ("seed=18446744073709551616", "config key seed: must be in [0, 4294967295]"),
    ("seed=-1", "config key seed: must be in [0, 4294967295]"),
    ("teachers.0.train.seed=99999999999", "config key teachers[0].train.seed: must be in [0, 4294967295]"),
    ("trainer.epochs=1000000000000000000000", "config key trainer.epochs: at most 1,000,000 epochs"),
    ("name=" + "n" * 250, "config key name: 'nnnn"),
    ("output_dir=/tmp/" + "o" * 260, "config key output_dir: the folder name 'oooo"),
])
def test_absurd_values_are_refused_with_the_reason(files, tmp_path, setting, said) -> None:
    result = invoke(["run", "--output-dir", str(tmp_path), *sets(files), "--set", setting])
    line = error_line(result, 2)
    assert said in line and len(line) < 400
    assert not [p for p in tmp_path.iterdir() if p.is_dir()]


def test_a_huge_value_is_not_echoed_whole(files, tmp_path) -> None:
    result = invoke(["run", "--output-dir", str(tmp_path), *sets(files), "--set",
                     "trainer.amp=" + "x" * 10_000_000])
    line = error_line(result, 2)
    assert "config key trainer.amp: 'xxxx" in line and "(10000000 characters)" in line
    assert len(line) < 400


def test_a_batch_larger_than_the_split_is_refused_before_any_teacher(files, tmp_path) -> None:
    line = error_line(invoke(["run", "--output-dir", str(tmp_path), *sets(files, "data.batch_size=512")]), 2)
    assert "config key data.batch_size: 512 is larger than the student's training split (256 images)" in line
    line = error_line(invoke(["run", "--output-dir", str(tmp_path), *sets(
        files, "teachers.0.checkpoint=null", "teachers.0.train.batch_size=300")]), 2)
    assert "config key teachers[0].train.batch_size: 300 is larger than the teacher's training split" in line


# --- factories, empty configs ---------------------------------------------------------------------

def test_a_factory_that_raises_is_one_line_like_a_user_error(files, tmp_path, monkeypatch) -> None:
    result = invoke(["run", "--output-dir", str(tmp_path), *sets(files, "student.type=kdfault_exploding")])
    line = error_line(result, 2)
    assert "model 'kdfault:kdfault_exploding' failed while being built with RuntimeError: shape [3, 0] " \
           "is invalid for input of size 7" in line
    assert "plugin 'kdfault' is broken" in line and "KDCORE_DEBUG=1" in line
    assert not [p for p in tmp_path.iterdir() if p.is_dir()]  # removed, as after a UserError
    monkeypatch.setenv("KDCORE_DEBUG", "1")
    result = invoke(["run", "--output-dir", str(tmp_path), *sets(files, "student.type=kdfault_exploding")])
    assert result.exit_code == 2
    assert "Traceback" in result.output and "in exploding_model" in result.output
    monkeypatch.delenv("KDCORE_DEBUG")
    result = invoke(["--debug", "run", "--output-dir", str(tmp_path), *sets(files, "student.type=kdfault_exploding")])
    assert result.exit_code == 2 and "in exploding_model" in result.output


def test_an_empty_config_yaml_on_resume_says_it_is_empty(stopped, tmp_path) -> None:
    run_dir = copy_of(stopped, tmp_path)
    (run_dir / "config.yaml").write_text("")
    line = error_line(invoke(["run", "--resume", str(run_dir)]), 2)
    assert f"{run_dir / 'config.yaml'} is empty, so the run's settings are lost" in line


def test_a_build_lock_naming_a_dead_process_is_not_blamed(tmp_path) -> None:
    """A kill leaves the lock file naming its process; whoever waits next must not name it."""
    import fcntl
    import threading

    from kdcore.engine.checkpoint import exclusive

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    path = str(tmp_path / "teacher.pt")
    holder = open(path + ".lock", "a+")
    fcntl.flock(holder, fcntl.LOCK_EX)  # a live holder that has not written its name yet
    holder.write(f"kdcore process {gone.pid} on {socket.gethostname()}\n")
    holder.flush()
    said: list[str] = []
    def wait_for_it() -> None:
        with exclusive(path, said.append):
            pass

    waiter = threading.Thread(target=wait_for_it)
    waiter.start()
    for _ in range(3000):
        if said:
            break
        threading.Event().wait(0.01)
    holder.close()  # releases the lock: the waiter gets it
    waiter.join(timeout=30)
    assert said == [f"waiting for another process to finish {path} (lock file {path}.lock)"]


def test_a_teacher_checkpoint_holding_nan_is_refused(files, tmp_path) -> None:
    state = torch.load(files["teacher"], weights_only=True)
    state["fc.weight"][0, 0] = float("nan")
    bad = tmp_path / "nan-teacher.pt"
    torch.save(state, bad)
    line = error_line(invoke(["run", "--output-dir", str(tmp_path / "out"), *sets(
        files, f"teachers.0.checkpoint={bad}")]), 2)
    assert f"teachers[0].checkpoint {bad} holds NaN/Inf weights (fc.weight)" in line


@pytest.mark.e2e
def test_nan_weights_under_torchrun_stop_every_process(files, tmp_path) -> None:
    """Rank 1 checks the weights at the epoch end too, so it stops with rank 0 instead of
    waiting for it in the next all-reduce until torch's timeout."""
    worker = os.path.join(os.path.dirname(__file__), "fixtures", "ddp_nan_weights_worker.py")
    args = ["run", "--output-dir", str(tmp_path), *sets(
        files, "trainer.epochs=2", "trainer.on_nonfinite=skip",  # rank 1 would wait in the skip agreement
        losses("{type: kdfault_nan_grad_ddp, steps: [3]}"))]  # epoch 1's last step
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc-per-node", "2", worker, *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode != 0
    said = proc.stdout + proc.stderr
    assert said.count("the weights hold NaN/Inf after 4 steps") >= 1
    # the first rank to stop exits 3 (torchrun then stops the other, if it has not stopped yet);
    # a rank left waiting would hang until torch's 30-minute timeout, past this test's 120 s
    assert "exitcode  : 3" in said
    assert "[rank1]: Traceback" not in said and "[rank0]: Traceback" not in said  # one line each
    run_dir = only_run_dir(tmp_path)
    assert not (run_dir / "student.pt").exists()
    assert finite(load_checkpoint(str(run_dir / "checkpoints" / "last.pt"))["algorithm"])


def test_a_full_disk_while_a_metrics_row_is_appended_names_the_file(files, tmp_path, monkeypatch) -> None:
    import errno

    from kdcore import loggers

    def full(self: Any, row: dict) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(loggers.JsonlLogger, "log_epoch", full)
    line = error_line(invoke(["run", "--output-dir", str(tmp_path), *sets(files, "trainer.epochs=1")]), 2)
    assert f"no space left to write {only_run_dir(tmp_path) / 'metrics.jsonl'} (No space left on device)" in line
    monkeypatch.undo()
    assert invoke(["run", "--resume", str(only_run_dir(tmp_path))]).exit_code == 0


def test_nonfinite_tensors_names_only_the_floating_tensors_holding_nan_or_inf() -> None:
    from kdcore.engine.loop import nonfinite_tensors

    state = {"ok": torch.ones(3), "nan": torch.tensor([1.0, float("nan")]), "ints": torch.arange(3),
             "inf": torch.tensor([float("-inf")]), "empty": torch.empty(0), "half": torch.ones(2).half()}
    assert nonfinite_tensors(state) == ["nan", "inf"]
    assert nonfinite_tensors({"ok": torch.ones(2)}) == [] and nonfinite_tensors({}) == []
