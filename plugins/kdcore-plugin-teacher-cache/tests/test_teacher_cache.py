"""The teacher-output cache: same losses as running the teacher, reused, never stale."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from click.testing import CliRunner

from kdcore.cli import main

pytestmark = pytest.mark.fashion


def records(distiller, folder) -> dict:
    """The run's record of each teacher (engine.teachers.Teacher) as the cache reads it: its
    checkpoint's place and the checksum of its weights as they run."""
    from kdcore.engine.teachers import Teacher, weights_checksum

    return {name: Teacher(model, os.path.join(folder, f"{name}.pt"), sha256="", params=0,
                          running_sha256=weights_checksum(model))
            for name, model in distiller.teachers.items()}


def run(tmp_path, tiny, *extra: str):
    args = ["run", "--output-dir", str(tmp_path)]
    for item in [*tiny, "trainer.epochs=2", *extra]:
        args += ["--set", item]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    run_dir = result.output.strip().splitlines()[-1][len("run dir: "):]
    rows = [json.loads(l) for l in open(os.path.join(run_dir, "metrics.jsonl"))]
    return result.output, rows


def test_cached_losses_match_online_and_cache_is_reused(tmp_path, tiny) -> None:
    _, online = run(tmp_path, tiny)
    out1, cached = run(tmp_path, tiny, "trainer.teacher_cache=true")
    assert "caching its outputs on 256 images" in out1
    for a, b in zip(online, cached):
        assert a["train"]["kd"] == pytest.approx(b["train"]["kd"], rel=1e-4, abs=1e-6)
        assert a["train"]["task"] == pytest.approx(b["train"]["task"], rel=1e-4, abs=1e-6)
        assert a["student"]["test"]["top1"] == pytest.approx(b["student"]["test"]["top1"], abs=0.5)
    out2, _ = run(tmp_path, tiny, "trainer.teacher_cache=true")
    assert "reading cached outputs" in out2


def test_different_inputs_never_reuse_a_cache(tmp_path, tiny) -> None:
    out1, _ = run(tmp_path, tiny, "trainer.teacher_cache=true")
    out2, _ = run(tmp_path, [t for t in tiny if not t.startswith("data.train_limit")],
                  "data.train_limit=192", "trainer.teacher_cache=true")
    assert "caching its outputs on 192 images" in out2


def test_feature_taps_are_cached_by_index() -> None:
    import kdcore
    from kdcore.components.distiller import DistillPoint
    from kdcore.data import TensorSplit
    from kdcore_plugin_teacher_cache.teacher_cache import attach_teacher_cache
    from kdcore.models.cnn import cnn_teacher
    from kdcore.taps import Tap

    torch.manual_seed(0)
    teacher = cnn_teacher()
    head = kdcore.DistillationHead({"l": (1.0, kdcore.build("loss", "kd"))})
    point = DistillPoint("p", "t", Tap("output"), Tap("stage2"), head)
    distiller = kdcore.Distiller({"t": teacher}, [point])
    data = TensorSplit(torch.randn(20, 1, 28, 28), torch.zeros(20, dtype=torch.long))
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        attach_teacher_cache(distiller, data, records(distiller, folder), torch.device("cpu"),
                             batch_size=7, progress=False, log=lambda s: None)
        idx = torch.tensor([19, 3, 3, 0])
        cached = distiller.teacher_features(data.inputs[idx], indices=idx)["t"]["stage2"]
        live = distiller.compute_teacher_features(data.inputs[idx])["t"]["stage2"]
        assert torch.allclose(cached, live, atol=1e-5)

        # on an accelerator the cache is gathered where the rows are used; the same rows
        from kdcore_plugin_teacher_cache.teacher_cache import TeacherOutputCache

        memmapped = distiller.caches["t"]
        resident = TeacherOutputCache(memmapped.path, list(memmapped.arrays))
        resident.keep_on(torch.device("cpu"), chunk_bytes=1)  # one row a copy
        assert resident.resident and resident.nbytes == memmapped.nbytes
        for key, rows in memmapped.rows(idx, torch.device("cpu")).items():
            assert torch.equal(resident.rows(idx, torch.device("cpu"))[key], rows)


def test_two_runs_filling_one_cache_at_once_both_succeed(tmp_path) -> None:
    from kdcore_plugin_teacher_cache.teacher_cache import TeacherOutputCache, _fill

    distiller, data, _ = _cache_fixture(tmp_path)
    folder = str(tmp_path / "t-key")
    for _ in range(2):  # the second finds the folder taken when it renames its own: keeps the first
        _fill(distiller, "t", data, folder, ["output"], 4, torch.device("cpu"), False)
    assert sorted(os.listdir(tmp_path)) == ["t-key"]  # no temporary folder left behind
    rows = TeacherOutputCache(folder, ["output"]).rows(torch.tensor([5, 0]), torch.device("cpu"))["output"]
    assert torch.allclose(rows, distiller.compute_teacher_features(data.inputs[[5, 0]])["t"]["output"], atol=1e-5)


def _cache_fixture(tmp_path):
    import kdcore
    from kdcore.components.distiller import DistillPoint
    from kdcore.data import TensorSplit
    from kdcore.models.cnn import cnn_teacher
    from kdcore.taps import Tap

    torch.manual_seed(0)
    head = kdcore.DistillationHead({"l": (1.0, kdcore.build("loss", "kd"))})
    distiller = kdcore.Distiller({"t": cnn_teacher()}, [DistillPoint("p", "t", Tap("output"), Tap("output"), head)])
    data = TensorSplit(torch.randn(6, 1, 28, 28), torch.zeros(6, dtype=torch.long))
    return distiller, data, records(distiller, tmp_path)


def test_a_second_run_waits_on_the_lock_and_reuses_the_cache_the_first_fills(tmp_path, monkeypatch) -> None:
    """Another run (here: the test) holds the cache's lock while it fills: this run must wait on
    the lock before its agreement step, and then read that cache rather than fill its own."""
    import fcntl
    import threading
    import time

    import kdcore_plugin_teacher_cache.teacher_cache as tc

    distiller, data, teachers = _cache_fixture(tmp_path)
    cpu = torch.device("cpu")
    folder = tc.attach_teacher_cache(distiller, data, teachers, cpu, progress=False, log=lambda _: None)["t"]
    shutil.rmtree(folder)
    fill, events, errors = tc._fill, [], []
    monkeypatch.setattr(tc, "_fill", lambda *a, **k: events.append("waiter filled") or fill(*a, **k))
    monkeypatch.setattr(tc.distributed, "all_ranks", lambda ok, device, **_: events.append("agreed") or ok)
    monkeypatch.setattr(tc.distributed, "world_size", lambda: 2)  # this run: rank 0 of 2

    def waiter_run() -> None:
        try:
            tc.attach_teacher_cache(distiller, data, teachers, cpu, progress=False, log=lambda _: None)
        except BaseException as error:  # noqa: BLE001 - re-raised in the test
            errors.append(error)

    waiter = threading.Thread(target=waiter_run)
    with open(folder + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        waiter.start()
        time.sleep(0.3)
        assert waiter.is_alive()
        fill(distiller, "t", data, folder, ["output"], 4, cpu, False)  # the other run's fill
        events.append("released")
    waiter.join(timeout=60)
    assert not waiter.is_alive()
    if errors:
        raise errors[0]
    assert events == ["released", "agreed", "agreed"]  # it waited for the lock, then did not fill


def test_the_cache_is_keyed_by_the_checksum_the_run_holds_not_a_second_hash(tmp_path, monkeypatch) -> None:
    """The run hashes the teachers' weights as they run once (Teacher.running_sha256); the
    cache's key is that value, so other weights (another checksum) never read this cache."""
    import kdcore_plugin_teacher_cache.teacher_cache as tc
    import kdcore.engine.teachers

    distiller, data, teachers = _cache_fixture(tmp_path)
    cpu = torch.device("cpu")
    monkeypatch.setattr(kdcore.engine.teachers, "weights_checksum", lambda model: pytest.fail("hashed again"))
    first = tc.attach_teacher_cache(distiller, data, teachers, cpu, progress=False, log=lambda _: None)["t"]
    teachers["t"].running_sha256 = "0" * 64
    other = tc.attach_teacher_cache(distiller, data, teachers, cpu, progress=False, log=lambda _: None)["t"]
    assert first != other and os.path.isdir(first) and os.path.isdir(other)


def test_other_ranks_never_fill_and_stop_when_the_filler_failed(tmp_path, monkeypatch) -> None:
    import kdcore_plugin_teacher_cache.teacher_cache as tc
    from kdcore.errors import UserError

    distiller, data, teachers = _cache_fixture(tmp_path)
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(tc.distributed, "world_size", lambda: 2)
    monkeypatch.setattr(tc, "_fill", lambda *a, **k: pytest.fail("only LOCAL_RANK 0 fills"))
    calls = []
    monkeypatch.setattr(tc.distributed, "all_ranks",
                        lambda ok, device, **kw: calls.append(kw) or False)  # the filler failed
    with pytest.raises(UserError, match="filling its output cache failed on another process"):
        tc.attach_teacher_cache(distiller, data, teachers, torch.device("cpu"), progress=False,
                                log=lambda _: None)
    assert calls == [{"patient": True}]  # waited in the long-timeout group, not NCCL's


def test_an_incomplete_cache_folder_is_named(tmp_path) -> None:
    import kdcore_plugin_teacher_cache.teacher_cache as tc
    from kdcore.errors import UserError

    distiller, data, teachers = _cache_fixture(tmp_path)
    cpu = torch.device("cpu")
    folder = tc.attach_teacher_cache(distiller, data, teachers, cpu, progress=False, log=lambda _: None)["t"]
    os.unlink(os.path.join(folder, "keys.json"))
    with pytest.raises(UserError, match=f"its output cache {folder} is incomplete.*delete that folder"):
        tc.attach_teacher_cache(distiller, data, teachers, cpu, progress=False, log=lambda _: None)


@pytest.fixture
def group_umask():
    """umask 002, as on a machine where a team shares a group."""
    previous = os.umask(0o002)
    yield
    os.umask(previous)


def test_caches_get_the_umask_modes_not_tempfiles(tmp_path, group_umask) -> None:
    """Teacher outputs are for other runs (and users) to reuse: the umask's modes, as the core's
    checkpoints and scaffolds (tests/test_reliability.py)."""
    import stat

    import kdcore_plugin_teacher_cache.teacher_cache as tc
    mode = lambda path: stat.S_IMODE(os.stat(path).st_mode)  # noqa: E731
    distiller, data, teachers = _cache_fixture(tmp_path)
    folder = tc.attach_teacher_cache(distiller, data, teachers, torch.device("cpu"), progress=False,
                                     log=lambda _: None)["t"]
    assert mode(folder) == 0o775  # mkdtemp alone: 0700
    assert {mode(os.path.join(folder, f)) for f in os.listdir(folder)} == {0o664}


def test_a_single_process_with_a_stray_local_rank_still_fills_its_cache(tmp_path, monkeypatch) -> None:
    import kdcore_plugin_teacher_cache.teacher_cache as tc

    distiller, data, teachers = _cache_fixture(tmp_path)
    monkeypatch.setenv("LOCAL_RANK", "1")  # left over in a job script; no torchrun here
    folder = tc.attach_teacher_cache(distiller, data, teachers, torch.device("cpu"), progress=False,
                                     log=lambda _: None)["t"]
    assert os.path.isfile(os.path.join(folder, "keys.json"))


def test_filling_the_cache_runs_the_teachers_under_inference_mode(tmp_path) -> None:
    """The fill's teacher passes go to disk, never to autograd: inference mode (the training
    step's and evaluation's modes: tests/test_frozen_teachers.py)."""
    import kdcore
    from kdcore.components.distiller import DistillPoint
    from kdcore.data import TensorSplit
    from kdcore.taps import Tap
    from kdcore_plugin_teacher_cache.teacher_cache import attach_teacher_cache

    modes: list[tuple[bool, bool]] = []

    class Teacher(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            modes.append((torch.is_inference_mode_enabled(), torch.is_grad_enabled()))
            return self.fc(x)

    torch.manual_seed(0)
    head = kdcore.DistillationHead({"kd": (1.0, kdcore.build("loss", "kd"))})
    distiller = kdcore.Distiller({"t": Teacher()}, [DistillPoint("p", "t", Tap("output"), Tap("output"), head)])
    data = TensorSplit(torch.randn(8, 4), torch.arange(8) % 3)
    attach_teacher_cache(distiller, data, records(distiller, tmp_path), torch.device("cpu"),
                         batch_size=4, progress=False, log=lambda s: None)
    assert modes and all(mode == (True, False) for mode in modes)


def test_a_checkpoint_folder_that_cannot_take_the_cache_sends_it_to_the_cache_dir(tmp_path, monkeypatch) -> None:
    import kdcore_plugin_teacher_cache.teacher_cache as tc

    monkeypatch.setenv("KDCORE_CACHE_DIR", str(tmp_path / "cache"))
    checkpoint, fallback = str(tmp_path / "shared" / "t.pt"), str(tmp_path / "cache" / "teacher-outputs")
    assert tc._folder_for(checkpoint) == str(tmp_path / "shared" / "teacher-outputs")
    monkeypatch.setattr(tc.os, "access", lambda path, mode: False)  # made, but not writable
    assert tc._folder_for(checkpoint) == fallback

    def refused(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tc.os, "makedirs", refused)  # cannot even be made
    assert tc._folder_for(str(tmp_path / "other" / "t.pt")) == fallback
