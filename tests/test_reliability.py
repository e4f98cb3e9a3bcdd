"""Faults a run meets and what kdcore does about them (docs/reliability.md lists them all):

* a NaN or Inf loss term: stop with the term, epoch and step named, exit 3, the last good
  checkpoint kept; ``trainer.on_nonfinite: skip`` skips such batches and counts them;
* checkpoints that would run code when unpickled, that are truncated or have flipped bits, or
  that do not fit the teacher model; a teacher below its ``expect_top1``;
* teacher weights changed during a run (the sha256 in summary.json is that of the file);
* truncated or corrupted IDX data files;
* a kill while a checkpoint is being written (in-process; real SIGKILLs: tests/test_resume.py).

Runs use a 256-image slice of Fashion-MNIST and a randomly initialised teacher checkpoint, so
none trains a teacher. The faulty losses are a test-only plugin (this module) registered
in-process.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
import time
import re
import shutil
import struct
import sys
import zlib
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner

import kdcore
from kdcore.cli import main
from kdcore.data.fashion_mnist import FILES, fashion_mnist
from kdcore.data.idx import read_idx
from kdcore.engine.checkpoint import load_checkpoint, load_weights, save_atomic
from kdcore.errors import UserError
from kdcore.models.cnn import cnn_student, cnn_teacher

from cli_runs import error_line, invoke_with, losses, only_run_dir, run_files, sets, write_idx

# --- the test-only plugin ----------------------------------------------------------------------


class Faulty(kdcore.Loss):
    """0 normally; ``bad[step]`` ("nan" or "inf") at those global steps."""

    def __init__(self, bad: dict[int, str] | None = None) -> None:
        super().__init__()
        self.bad = {int(k): float(v) for k, v in (bad or {}).items()}

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, **extra: Any) -> torch.Tensor:
        value = self.bad.get(extra["step"], 0.0)
        return (student * 0).sum() + value


class FaultyStage(kdcore.Loss):
    """0 in training; a pre-training stage whose loss is NaN from its second batch on."""

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, **extra: Any) -> torch.Tensor:
        return (student * 0).sum()

    def stages(self, head: Any) -> list[kdcore.PreTraining]:
        calls = [0]

        def loss(student: torch.Tensor, teacher: torch.Tensor, **extra: Any) -> torch.Tensor:
            calls[0] += 1
            return (student * 0).sum() + (float("nan") if calls[0] >= 2 else 0.0)

        return [kdcore.PreTraining("kdrel_nan_stage", 1, loss)]


class TeacherTamper(kdcore.Loss):
    """A buggy loss that writes into the teacher's weights (which must be caught)."""

    same_shape = False

    def __init__(self, teacher_module: torch.nn.Module) -> None:
        super().__init__()
        self._teacher = [teacher_module]  # a list: not registered as a submodule

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, **extra: Any) -> torch.Tensor:
        with torch.no_grad():
            next(self._teacher[0].parameters()).add_(1e-3)
        return (student * 0).sum()


class NaNGradient(kdcore.Loss):
    """0, with a NaN gradient (sqrt at 0): every fp16 step overflows, no loss is NaN."""

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, **extra: Any) -> torch.Tensor:
        return torch.sqrt(((student - student.detach()).float() ** 2).sum(1)).mean()


@kdcore.hookimpl
def kdcore_losses() -> list[kdcore.Component]:
    return [kdcore.Component("kdrel_faulty", Faulty, "test-only: NaN/Inf at chosen steps"),
            kdcore.Component("kdrel_nan_grad", NaNGradient, "test-only: NaN gradient"),
            kdcore.Component("kdrel_faulty_stage", FaultyStage, "test-only: NaN in a stage"),
            kdcore.Component("kdrel_tamper", TeacherTamper, "test-only: edits the teacher")]


# --- helpers -------------------------------------------------------------------------------------

def sha256_of_state(state: dict[str, torch.Tensor]) -> str:
    """The teacher checksum as docs/reliability.md defines it: names in sorted order, each
    followed by its tensor's raw bytes (C order)."""
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode("utf-8"))
        digest.update(state[name].reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def tensor_offset(path: Path, member_suffix: str) -> int:
    """Where a zip member's bytes start in a torch checkpoint (to flip one of them)."""
    import zipfile

    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith(member_suffix))
    raw = path.read_bytes()
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26: info.header_offset + 30])
    return info.header_offset + 30 + name_len + extra_len


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A small data root and a randomly initialised teacher checkpoint."""
    return run_files(tmp_path_factory.mktemp("reliability"))


def invoke(cli_args: list[str]) -> Any:
    """``kdcore CLI_ARGS`` in-process, with the installed plugins plus this module's losses."""
    return invoke_with(sys.modules[__name__], "kdrel_faults", cli_args)


# --- NaN / Inf ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def stopped_run(files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """4 steps an epoch; Inf at step 5 and NaN at step 7 (both in epoch 2); a checkpoint every
    2 steps. The run stops at step 5; it is only ever copied by the tests."""
    out = tmp_path_factory.mktemp("stopped")
    result = invoke(["run", "--output-dir", str(out), *sets(
        files, "trainer.checkpoint_every=2",
        losses("{type: kdrel_faulty, name: boom, weight: 1.0, bad: {5: inf, 7: nan}}"))])
    return only_run_dir(out), result


def copy_run(run_dir: Path, tmp_path: Path) -> Path:
    target = tmp_path / run_dir.name
    shutil.copytree(run_dir, target)
    return target


@pytest.mark.fashion
def test_nonfinite_term_stops_naming_term_epoch_and_step_and_keeps_checkpoint(stopped_run) -> None:
    run_dir, result = stopped_run
    line = error_line(result, 3)
    assert "loss term 'boom' is inf at epoch 2, step 5" in line
    assert "the last good checkpoint is kept" in line and "trainer.on_nonfinite=skip" in line
    assert not (run_dir / "summary.json").exists()
    # the last good checkpoint: end of epoch 1 (step 4), before the bad step; finite weights
    state = load_checkpoint(str(run_dir / "checkpoints" / "last.pt"))
    assert state["position"]["global_step"] == 4 and state["position"]["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["algorithm"].values() if v.is_floating_point())
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 1


@pytest.mark.fashion
def test_resume_with_skip_counts_skipped_batches_and_teacher_checksum_matches_file(
        stopped_run, files, tmp_path) -> None:
    run_dir = copy_run(stopped_run[0], tmp_path)
    result = invoke(["run", "--resume", str(run_dir), "--set", "trainer.on_nonfinite=skip"])
    assert result.exit_code == 0, (result.output, result.exception)
    assert "resumed at epoch 2, step 0" in result.output
    # the override is part of the run now; the config it replaced is kept beside it
    assert "on_nonfinite: skip" in (run_dir / "config.yaml").read_text()
    assert "on_nonfinite: stop" in (run_dir / "config.yaml.1").read_text()
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert "skipped_batches" not in rows[0]["train"] and rows[1]["train"]["skipped_batches"] == 2
    assert all(math.isfinite(v) for v in rows[1]["train"].values())
    # the teacher was not touched: the summary's sha256 is the checksum of the file's weights
    summary = json.loads((run_dir / "summary.json").read_text())
    expected = sha256_of_state(torch.load(files["teacher"], weights_only=True))
    assert summary["teacher"]["sha256"] == expected
    assert summary["teacher"]["checkpoint"] == str(files["teacher"])


@pytest.mark.fashion
def test_nonfinite_stage_loss_stops_naming_stage_epoch_and_step(files, tmp_path) -> None:
    result = invoke(["run", "--output-dir", str(tmp_path), *sets(
        files, losses("{type: kdrel_faulty_stage, weight: 1.0}"))])
    line = error_line(result, 3)
    assert "stage 'kdrel_nan_stage'" in line and "epoch 1, step 1" in line


@pytest.mark.fashion
def test_an_fp16_epoch_of_skipped_steps_is_counted_and_warned_about(files, tmp_path) -> None:
    result = invoke(["run", "--output-dir", str(tmp_path), *sets(
        files, "trainer.amp=fp16", "trainer.epochs=1", losses("{type: kdrel_nan_grad, weight: 1.0}"))])
    assert result.exit_code == 0, result.output
    row = json.loads((only_run_dir(tmp_path) / "metrics.jsonl").read_text().splitlines()[0])
    assert row["train"]["scaler_skipped_steps"] == 4  # 256 images, batch 64: every step
    assert "warning: the fp16 loss scaler skipped 4 of 4 steps this epoch" in result.output


@pytest.mark.fashion
def test_nonfinite_stage_batches_are_skipped_and_counted_with_skip(files, tmp_path) -> None:
    result = invoke(["run", "--output-dir", str(tmp_path), *sets(
        files, losses("{type: kdrel_faulty_stage, weight: 1.0}"), "trainer.on_nonfinite=skip")])
    assert result.exit_code == 0, result.output
    stage_line = next(l for l in result.output.splitlines() if l.startswith("stage kdrel_nan_stage:"))
    batches = int(re.search(r"kdrel_nan_stage_skipped_batches (\d+)", stage_line).group(1))
    assert batches >= 1  # every batch from the second on
    assert (only_run_dir(tmp_path) / "summary.json").exists()


@pytest.mark.fashion
def test_teacher_weights_changed_during_run_is_caught(files, tmp_path) -> None:
    result = invoke(["run", "--output-dir", str(tmp_path), *sets(
        files, "trainer.epochs=1", "data.train_limit=128",
        "teachers.0.distill=[{student_module: stage3, teacher_module: stage3, "
        "head: {losses: [{type: kdrel_tamper}]}}]")])
    assert isinstance(result.exception, RuntimeError), result.output
    assert "teacher 'teacher' weights changed during the run" in str(result.exception)
    assert not (only_run_dir(tmp_path) / "summary.json").exists()


# --- checkpoints -------------------------------------------------------------------------------

class Evil:
    """Unpickling this runs code (it would create ``marker``)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (open, (self.marker, "w"))


@pytest.mark.fashion
def test_teacher_checkpoint_that_would_run_code_is_refused(files, tmp_path) -> None:
    evil, marker = tmp_path / "evil.pt", tmp_path / "pwned"
    torch.save({"state_dict": cnn_teacher().state_dict(), "extra": Evil(str(marker))}, evil)
    result = invoke(["run", "--output-dir", str(tmp_path), *sets(
        files, f"teachers.0.checkpoint={evil}")])
    line = error_line(result, 2)
    assert f"teachers[0].checkpoint {evil} contains Python objects that would run code" in line
    assert "(io.open)" in line
    assert not marker.exists()


@pytest.mark.fashion
def test_teacher_checkpoint_that_does_not_fit_names_missing_and_unexpected_keys(files, tmp_path) -> None:
    state = torch.load(files["teacher"], weights_only=True)
    state["head.weight"] = state.pop("fc.weight")
    wrong = tmp_path / "renamed.pt"
    torch.save({"state_dict": state}, wrong)
    result = invoke(["run", "--output-dir", str(tmp_path), *sets(files, f"teachers.0.checkpoint={wrong}")])
    line = error_line(result, 2)
    assert f"teachers[0].checkpoint {wrong} does not fit SmallCNN" in line
    assert "missing keys [fc.weight] (1)" in line and "unexpected keys [head.weight] (1)" in line


def test_checkpoint_with_wrong_shapes_names_them(tmp_path) -> None:
    path = tmp_path / "student.pt"
    torch.save(cnn_student().state_dict(), path)
    with pytest.raises(UserError, match=r"shape mismatches \[stage1\.conv\.weight \(8, 1, 3, 3\) "
                                        r"vs \(24, 1, 3, 3\)"):
        load_weights(cnn_teacher(), str(path), what="teachers[0].checkpoint")


@pytest.mark.fashion
def test_expect_top1_is_checked_before_training(files, tmp_path) -> None:
    result = invoke(["run", "--output-dir", str(tmp_path), *sets(files, "teachers.0.expect_top1=99")])
    line = error_line(result, 2)
    assert "teachers[0].expect_top1: the teacher scores" in line and "expected 99.00 (+/- 1.0)" in line
    assert not list(tmp_path.iterdir())  # nothing trained: the run directory is removed again
    assert "removed: the run stopped before training the student" in result.output


@pytest.mark.fashion
def test_corrupted_resume_checkpoint_is_named(stopped_run, tmp_path) -> None:
    run_dir = copy_run(stopped_run[0], tmp_path)
    last = run_dir / "checkpoints" / "last.pt"
    flip_byte(last, tensor_offset(last, "data/0") + 3)
    line = error_line(invoke(["run", "--resume", str(run_dir)]), 2)
    assert f"resume checkpoint {last} is corrupted: " in line and "fails its CRC check" in line


@pytest.mark.fashion
def test_torn_metrics_line_is_dropped_on_resume(stopped_run, tmp_path) -> None:
    run_dir = copy_run(stopped_run[0], tmp_path)
    with open(run_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write('{"epoch": 2, "lr": 0.0')
    result = invoke(["run", "--resume", str(run_dir), "--set", "trainer.on_nonfinite=skip"])
    assert result.exit_code == 0, (result.output, result.exception)
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 2


@pytest.mark.fashion
def test_resume_removes_the_partial_writes_a_kill_left(stopped_run, tmp_path) -> None:
    run_dir = copy_run(stopped_run[0], tmp_path)
    torn = [run_dir / "checkpoints" / ".kdcore-tmp-4242-0123456789ab.pt",
            run_dir / ".kdcore-tmp-4242-0123456789ab.txt", run_dir / ".kdcore-tmp-4242-0123456789ab.safetensors",
            run_dir / "checkpoints" / ".tmp-4242-0123456789ab.pt"]  # 0.1.6's writer
    mine = [run_dir / "notes.tmp", run_dir / "checkpoints" / ".tmp-mine.pt", run_dir / "summary.json.tmp"]
    for path in torn + mine:
        path.write_bytes(b"half a write")
    result = invoke(["run", "--resume", str(run_dir), "--set", "trainer.on_nonfinite=skip"])
    assert result.exit_code == 0, result.output
    assert not any(path.exists() for path in torn)
    assert all(path.read_bytes() == b"half a write" for path in mine)  # a user's files stay
    assert (run_dir / "checkpoints" / "last.pt").exists()


@pytest.mark.fashion
def test_resume_refuses_another_optimizer_type(stopped_run, tmp_path) -> None:
    run_dir = copy_run(stopped_run[0], tmp_path)
    line = error_line(invoke(["run", "--resume", str(run_dir), "--set", "optimizer.type=adam",
                              "--set", "trainer.on_nonfinite=skip"]), 2)
    assert "optimizer.type cannot change on resume" in line and "SGD" in line and "Adam" in line
    assert not (run_dir / "config.yaml.1").exists()


@pytest.mark.fashion
def test_a_config_from_an_older_kdcore_is_not_rewritten_for_new_default_keys(stopped_run, tmp_path) -> None:
    run_dir = copy_run(stopped_run[0], tmp_path)
    saved = (run_dir / "config.yaml").read_text()
    older = "".join(l for l in saved.splitlines(keepends=True) if "teacher_fold_bn" not in l)
    (run_dir / "config.yaml").write_text(older)
    invoke(["run", "--resume", str(run_dir)])  # stops again at the bad batch; the config is decided first
    assert "resumed at epoch 2" in invoke(["run", "--resume", str(run_dir)]).output
    assert (run_dir / "config.yaml").read_text() == older and not (run_dir / "config.yaml.1").exists()
    result = invoke(["run", "--resume", str(run_dir), "--set", "trainer.on_nonfinite=skip"])
    assert result.exit_code == 0, result.output
    assert (run_dir / "config.yaml.1").read_text() == older  # rewritten for the real override only


@pytest.mark.fashion
def test_a_saved_value_a_rule_refuses_is_fixed_by_the_resumes_override(stopped_run, tmp_path) -> None:
    """config.yaml and last.pt's config are compared as saved: a value out of its field's range
    there (edited by hand, or from a kdcore with fewer rules) is what --set may fix."""
    run_dir = copy_run(stopped_run[0], tmp_path)
    saved = (run_dir / "config.yaml").read_text()
    assert "eval_batch_size: 1000" in saved
    (run_dir / "config.yaml").write_text(saved.replace("eval_batch_size: 1000", "eval_batch_size: 0"))
    last = run_dir / "checkpoints" / "last.pt"
    state = load_checkpoint(str(last))
    state["config"]["data"]["eval_batch_size"] = 0
    save_atomic(state, str(last))
    result = invoke(["run", "--resume", str(run_dir), "--set", "data.eval_batch_size=500",
                     "--set", "trainer.on_nonfinite=skip"])
    assert result.exit_code == 0, result.output
    assert "resumed at epoch 2" in result.output and (run_dir / "summary.json").exists()
    assert "eval_batch_size: 500" in (run_dir / "config.yaml").read_text()
    # unfixed, the value is refused in the config the run would train with
    line = error_line(invoke(["run", "--resume", str(copy_run(stopped_run[0], tmp_path / "again")),
                              "--set", "data.eval_batch_size=0"]), 2)
    assert "config key data.eval_batch_size: must be at least 1, got 0" in line


@pytest.mark.fashion
def test_resume_refuses_a_teacher_that_changed(stopped_run, files, tmp_path) -> None:
    run_dir = copy_run(stopped_run[0], tmp_path)
    other = tmp_path / "other-teacher.pt"
    torch.manual_seed(1)
    torch.save(cnn_teacher().state_dict(), other)
    before = (run_dir / "config.yaml").read_text()
    line = error_line(invoke(["run", "--resume", str(run_dir), "--set",
                              f"teachers.0.checkpoint={other}"]), 2)
    assert "teacher 'teacher' is not the one this run started with" in line
    assert (run_dir / "config.yaml").read_text() == before and not (run_dir / "config.yaml.1").exists()


@pytest.mark.fashion
def test_resume_accepts_moved_files(stopped_run, files, tmp_path) -> None:
    run_dir = copy_run(stopped_run[0], tmp_path)
    root, teacher = tmp_path / "data", tmp_path / "teacher.pt"
    shutil.copytree(files["root"], root)
    shutil.copy(files["teacher"], teacher)
    result = invoke(["run", "--resume", str(run_dir), "--set", f"data.root={root}", "--set",
                     f"teachers.0.checkpoint={teacher}", "--set", "trainer.on_nonfinite=skip"])
    assert result.exit_code == 0, result.output
    assert "resumed at epoch 2" in result.output


@pytest.mark.fashion
@pytest.mark.parametrize("override, said", [
    ("data.train_limit=128", "--resume: data.train_limit was 256, now 128; a resumed run keeps its data, models and seed"),
    ("seed=7", "--resume: seed was 0, now 7"),
    ("student.type=cnn_teacher", "--resume: student.type was 'cnn_student', now 'cnn_teacher'"),
    ("output_dir=/tmp/elsewhere", "--resume: output_dir was"),
])
def test_resume_refuses_changes_to_what_the_run_trains_before_any_work(stopped_run, tmp_path, override, said) -> None:
    run_dir = copy_run(stopped_run[0], tmp_path)
    result = invoke(["run", "--resume", str(run_dir), "--set", override])
    assert said in error_line(result, 2)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 2 and lines[0].startswith("run dir: ")  # refused before any other work
    assert not (run_dir / "config.yaml.1").exists()


@pytest.mark.fashion
def test_resuming_a_finished_run_changes_nothing(stopped_run, tmp_path) -> None:
    run_dir = copy_run(stopped_run[0], tmp_path)
    assert invoke(["run", "--resume", str(run_dir), "--set", "trainer.on_nonfinite=skip"]).exit_code == 0
    files = {name: (run_dir / name).read_text() for name in ("config.yaml", "summary.json", "metrics.jsonl")}
    result = invoke(["run", "--resume", str(run_dir), "--set", "trainer.checkpoint_every=3"])
    assert result.exit_code == 0 and "the run is complete (2 epochs" in result.output
    assert {name: (run_dir / name).read_text() for name in files} == files
    assert not (run_dir / "config.yaml.2").exists()


@pytest.mark.fashion
def test_an_extension_killed_before_its_summary_is_not_taken_for_finished(stopped_run, tmp_path, monkeypatch) -> None:
    import kdcore.engine.run as run_module

    run_dir = copy_run(stopped_run[0], tmp_path)
    assert invoke(["run", "--resume", str(run_dir), "--set", "trainer.on_nonfinite=skip"]).exit_code == 0

    def killed(*_: Any, **__: Any) -> None:
        raise KeyboardInterrupt  # after the last checkpoint, before summary.json

    with monkeypatch.context() as patch:
        patch.setattr(run_module, "summarize", killed)
        invoke(["run", "--resume", str(run_dir), "--set", "trainer.epochs=3"])
    assert json.loads((run_dir / "summary.json").read_text())["epochs"] == 2  # the old one
    result = invoke(["run", "--resume", str(run_dir)])
    assert result.exit_code == 0 and "the run is complete" not in result.output
    assert json.loads((run_dir / "summary.json").read_text())["epochs"] == 3


def test_a_damaged_resume_checkpoint_says_how_to_go_on(tmp_path) -> None:
    """last.pt holds the whole training state: re-saving a state_dict cannot mend it."""
    from kdcore.engine.resume import load_last

    path = tmp_path / "checkpoints" / "last.pt"
    path.parent.mkdir()
    path.write_bytes(b"hello\n" * 20)
    with pytest.raises(UserError) as info:
        load_last(str(tmp_path))
    assert "state_dict" not in str(info.value)
    assert str(info.value).endswith("; this run cannot be resumed from it; start a new run")
    torch.save({"w": torch.arange(1000.0)}, path)
    flip_byte(path, tensor_offset(path, "data/0") + 100)
    with pytest.raises(UserError, match="fails its CRC check; this run cannot be resumed from it"):
        load_last(str(tmp_path))
    torch.save({"w": torch.arange(3.0)}, path)  # loads, but holds no training state
    with pytest.raises(UserError, match=f"resume checkpoint {path} is not a kdcore run checkpoint"):
        load_last(str(tmp_path))
    torch.save({"format": 1, "position": {}}, path)  # what kdcore 0.1.6 wrote: no rows, no config
    with pytest.raises(UserError, match="written by kdcore 0.1.6 or older.*start a new run"):
        load_last(str(tmp_path))


def test_damaged_checkpoints_are_named(tmp_path) -> None:
    good = tmp_path / "good.pt"
    torch.save({"w": torch.arange(1000.0), "b": torch.ones(3)}, good)
    raw = good.read_bytes()
    cases = {"empty": b"", "truncated-head": raw[:40], "truncated-half": raw[: len(raw) // 2],
             "truncated-tail": raw[:-5], "not-a-checkpoint": b"hello\n" * 20}
    for name, data in cases.items():
        path = tmp_path / f"{name}.pt"
        path.write_bytes(data)
        with pytest.raises(UserError, match=f"checkpoint {path} is corrupted or truncated") as info:
            load_checkpoint(str(path))
        assert "\n" not in str(info.value)
    flipped = tmp_path / "flipped.pt"
    shutil.copy(good, flipped)
    flip_byte(flipped, tensor_offset(flipped, "data/0") + 100)
    with pytest.raises(UserError, match=f"checkpoint {flipped} is corrupted: .*data/0 fails its CRC"):
        load_checkpoint(str(flipped))
    with pytest.raises(UserError, match="is a directory"):
        load_checkpoint(str(tmp_path))
    with pytest.raises(UserError, match="does not exist"):
        load_checkpoint(str(tmp_path / "nope.pt"))
    assert torch.equal(load_checkpoint(str(good))["w"], torch.arange(1000.0))


def test_checkpoints_holding_objects_are_refused_without_running_them(tmp_path) -> None:
    import numpy as np

    marker = tmp_path / "pwned"
    for name, obj in {"evil": Evil(str(marker)), "numpy": np.zeros(3)}.items():
        path = tmp_path / f"{name}.pt"
        torch.save({"w": torch.zeros(2), "x": obj}, path)
        with pytest.raises(UserError, match=f"checkpoint {path} contains Python objects that would "
                                            f"run code when loaded"):
            load_checkpoint(str(path))
    assert not marker.exists()


def test_kill_during_checkpoint_write_keeps_the_previous_file(tmp_path, monkeypatch) -> None:
    """save_atomic writes a temp file and renames it: dying mid-write leaves the old one."""
    path = tmp_path / "checkpoints" / "last.pt"
    save_atomic({"step": torch.tensor(1)}, str(path))

    def dies_halfway(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        f.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt  # what a Ctrl-C in the middle of torch.save looks like

    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        save_atomic({"step": torch.tensor(2)}, str(path))
    monkeypatch.undo()
    assert load_checkpoint(str(path))["step"].item() == 1
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]


# --- data files --------------------------------------------------------------------------------

def test_damaged_idx_files_are_named(tmp_path) -> None:
    images = torch.arange(2 * 4 * 4, dtype=torch.uint8).reshape(2, 4, 4)
    plain = write_idx(tmp_path / "plain-idx3-ubyte", images, compress=False)
    assert torch.equal(read_idx(str(tmp_path / "plain-idx3-ubyte")), images)
    packed = gzip.compress(plain + bytes(range(256)) * 40, mtime=0)  # long enough to damage inside
    cases = {
        "short-raw": (plain[:-3], "has 29 data bytes, expected 32 for shape (2, 4, 4): truncated or corrupted"),
        "header-only": (plain[:6], "is truncated (incomplete header)"),
        "not-idx": (b"\x50\x4b\x03\x04" + plain[4:], "is not an IDX file (bad header)"),
        "huge-shape": (bytes([0, 0, 8, 3]) + struct.pack(">3I", 2**31, 2**31, 2**31) + plain[16:],
                       "expected 9903520314283042199192993792 for shape"),
    }
    for name, (data, expected) in cases.items():
        path = tmp_path / f"{name}-idx3-ubyte"
        path.write_bytes(data)
        with pytest.raises(UserError, match="data file " + str(path)) as info:
            read_idx(str(path))
        assert expected in str(info.value), name
    damaged = bytearray(packed)
    damaged[len(damaged) // 2] ^= 0x55  # inside the deflate stream: zlib.error, not OSError
    gz_cases = {"truncated.gz": packed[: len(packed) // 2], "bitflip.gz": bytes(damaged),
                "crc.gz": packed[:-8] + bytes(8)}
    for name, data in gz_cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(UserError, match=f"data file {path} is corrupted or truncated") as info:
            read_idx(str(path))
        assert "\n" not in str(info.value)
    with pytest.raises(zlib.error):  # the bit flip really is the zlib.error case
        gzip.decompress(bytes(damaged))


def test_truncated_fashion_mnist_file_is_named(files, tmp_path) -> None:
    root = tmp_path / "fashion"
    shutil.copytree(files["root"], root)
    labels = root / (FILES["test"][1] + ".gz")
    labels.write_bytes(labels.read_bytes()[:-20])
    with pytest.raises(UserError, match=f"data file {labels} is corrupted or truncated"):
        fashion_mnist(str(root))
    # files that disagree on the number of samples
    write_idx(labels, torch.zeros(5, dtype=torch.uint8))
    with pytest.raises(UserError, match="do not match: \\(256, 28, 28\\) images, \\(5,\\) labels"):
        fashion_mnist(str(root))
    line = error_line(CliRunner().invoke(main, ["run", "--output-dir", str(tmp_path), "--set",
                                                f"data.root={root}"]), 2)
    assert "do not match" in line


@pytest.mark.fashion
def test_fp16_loss_scale_is_checkpointed_and_resumed(files, tmp_path, monkeypatch) -> None:
    import kdcore.engine.run as run_module

    out = tmp_path / "fp16"
    result = invoke(["run", "--output-dir", str(out), *sets(files, "trainer.amp=fp16", "trainer.epochs=1")])
    assert result.exit_code == 0, result.output
    run_dir = only_run_dir(out)
    path = run_dir / "checkpoints" / "last.pt"
    state = load_checkpoint(str(path))
    assert state["grad_scaler"]["scale"] > 0 and "_growth_tracker" in state["grad_scaler"]
    # a scale the run could not have reached on its own in 4 steps, so a fresh scaler would show
    state["grad_scaler"].update(scale=1024.0, _growth_tracker=7)
    torch.save(state, path)
    scalers = []

    def recording(amp: str, device: torch.device) -> Any:
        scalers.append(real(amp, device))
        return scalers[-1]

    real = run_module.loss_scaler
    monkeypatch.setattr(run_module, "loss_scaler", recording)
    result = invoke(["run", "--resume", str(run_dir), "--set", "trainer.epochs=2"])
    assert result.exit_code == 0, result.output
    (scaler,) = scalers
    # 4 more steps: the growth counter went on from 7 (it restarts at 0 without the checkpoint)
    assert scaler.get_scale() == 1024.0 and scaler.state_dict()["_growth_tracker"] == 11


def test_a_process_waiting_for_a_build_lock_names_the_holder(tmp_path) -> None:
    import socket
    import threading

    from kdcore.engine.checkpoint import exclusive

    path = str(tmp_path / "teacher.pt")
    said, inside = [], threading.Event()

    def other_run() -> None:
        with exclusive(path, said.append):
            inside.set()

    with exclusive(path):
        waiter = threading.Thread(target=other_run)
        waiter.start()
        deadline = time.monotonic() + 30
        while not said and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not inside.is_set()
    waiter.join(timeout=30)
    assert inside.is_set()
    assert said == [f"waiting for kdcore process {os.getpid()} on {socket.gethostname()} to finish "
                    f"{path} (lock file {path}.lock)"]
    assert open(path + ".lock").read() == ""  # released: a later waiter names no stale holder


def test_a_filesystem_without_flock_builds_unlocked_and_says_so(tmp_path, monkeypatch) -> None:
    import errno

    import kdcore.engine.checkpoint as ckpt

    def no_locks(*_: object) -> None:
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(ckpt.fcntl, "flock", no_locks)
    said, ran = [], []
    with ckpt.exclusive(str(tmp_path / "cache"), said.append):
        ran.append(True)
    assert ran and said == [f"no file locking where {tmp_path / 'cache'} lives (No locks available); "
                            f"going on without it"]

    def denied(*_: object) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(ckpt.fcntl, "flock", denied)  # a real failure is not "no locking here"
    with pytest.raises(OSError, match="Input/output error"):
        with ckpt.exclusive(str(tmp_path / "cache"), said.append):
            pytest.fail("the block must not run unlocked")


@pytest.fixture
def group_umask():
    """umask 002, as on a machine where a team shares a group."""
    previous = os.umask(0o002)
    yield
    os.umask(previous)


def test_checkpoints_and_scaffolds_get_the_umask_modes_not_tempfiles(tmp_path, group_umask) -> None:
    """Files a run writes for others to reuse (kdcore-plugin-teacher-cache tests its caches')."""
    import stat

    from kdcore import scaffold
    mode = lambda path: stat.S_IMODE(os.stat(path).st_mode)  # noqa: E731
    save_atomic({"w": torch.zeros(1)}, str(tmp_path / "teacher.pt"))
    assert mode(tmp_path / "teacher.pt") == 0o664  # mkstemp alone: 0600
    plugin = scaffold.new_plugin("mine", "loss", str(tmp_path / "plugins"))
    assert mode(plugin) == 0o775
