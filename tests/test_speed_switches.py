"""amp, channels_last and compile are switches that keep results equal within tolerance."""

from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner

from kdcore.cli import main

pytestmark = pytest.mark.fashion

TINY_OVERRIDES = ["data.train_limit=256", "data.test_limit=256", "trainer.epochs=1",
                  "teachers.0.train.epochs=1", "teachers.0.train.train_limit=256",
                  "trainer.progress=false", "data.batch_size=64"]


def last_row(tmp_path, tiny, *extra: str) -> dict:
    args = ["run", "--output-dir", str(tmp_path)]
    for item in [*tiny, "data.train_limit=128", "data.test_limit=128", *extra]:
        args += ["--set", item]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    run_dir = result.output.strip().splitlines()[-1][len("run dir: "):]
    return [json.loads(l) for l in open(os.path.join(run_dir, "metrics.jsonl"))][-1]


@pytest.fixture(scope="module")
def baseline(tmp_path_factory) -> dict:
    return last_row(tmp_path_factory.mktemp("base"), TINY_OVERRIDES)


def test_channels_last_matches(tmp_path, tiny, baseline) -> None:
    row = last_row(tmp_path, tiny, "trainer.channels_last=true")
    assert row["train"]["loss"] == pytest.approx(baseline["train"]["loss"], rel=1e-4)


def test_bf16_autocast_matches_loosely(tmp_path, tiny, baseline) -> None:
    row = last_row(tmp_path, tiny, "trainer.amp=bf16")
    assert row["train"]["loss"] == pytest.approx(baseline["train"]["loss"], rel=0.05)
    assert row["train"]["kd"] == pytest.approx(baseline["train"]["kd"], rel=0.1, abs=0.01)


def test_fp16_autocast_with_loss_scaling_matches_loosely(tmp_path, tiny, baseline) -> None:
    row = last_row(tmp_path, tiny, "trainer.amp=fp16")
    assert row["train"]["loss"] == pytest.approx(baseline["train"]["loss"], rel=0.05)
    assert row["train"].get("skipped_batches", 0) == 0  # an overflowing scaled step is not a NaN loss


def test_compile_matches(tmp_path, tiny, baseline) -> None:
    pytest.importorskip("torch._dynamo")
    # aot_eager traces the models (taps included) as inductor does, without minutes of C++
    # code generation on a 2-core test machine; inductor is the default for real runs
    row = last_row(tmp_path, tiny, "trainer.compile=true", "trainer.compile_backend=aot_eager")
    assert row["train"]["loss"] == pytest.approx(baseline["train"]["loss"], rel=1e-3)


def test_teacher_layout_auto_is_channels_last_on_cpu_only() -> None:
    import torch

    from kdcore.engine.frozen import teacher_memory_format

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert teacher_memory_format("auto", cpu, False) is torch.channels_last
    assert teacher_memory_format("auto", gpu, False) is torch.contiguous_format
    assert teacher_memory_format("auto", gpu, True) is torch.channels_last
    assert teacher_memory_format("contiguous", cpu, False) is torch.contiguous_format
    assert teacher_memory_format("channels_last", gpu, False) is torch.channels_last


def test_teacher_rewrites_change_speed_not_results(tmp_path, tiny, baseline) -> None:
    # the baseline ran with the defaults: channels_last teachers on the CPU, BatchNorms folded
    row = last_row(tmp_path, tiny, "trainer.teacher_memory_format=contiguous", "trainer.teacher_fold_bn=false")
    assert row["train"]["kd"] == pytest.approx(baseline["train"]["kd"], rel=1e-4)
    assert row["train"]["loss"] == pytest.approx(baseline["train"]["loss"], rel=1e-4)


def test_speed_up_puts_only_the_teachers_in_channels_last(tiny) -> None:
    from importlib import resources

    import torch

    from kdcore.assemble import build_algorithm, load_data
    from kdcore.config import load_config, read_yaml
    from kdcore.engine.run import speed_up
    from kdcore.models.cnn import cnn_student, cnn_teacher

    preset = str(resources.files("kdcore") / "presets" / "teacher_student.yaml")
    config = load_config(read_yaml(preset), tiny)
    splits = load_data(config.data)
    algorithm = build_algorithm(config, splits, cnn_student(), {config.teachers[0].name: cnn_teacher()})
    x = torch.randn(4, 1, 28, 28)
    teacher = next(iter(algorithm.distiller.teachers.values()))
    with torch.no_grad():
        before = teacher(x)
    speed_up(algorithm, config, torch.device("cpu"))
    assert teacher.stage1.conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not teacher.stage2.conv.weight.is_contiguous()
    assert algorithm.student.stage2.conv.weight.is_contiguous()
    with torch.no_grad():
        after = teacher(x)
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-6)
    algorithm.remove_taps()


def test_cpu_threads_follow_omp_num_threads_and_share_cores_under_torchrun(monkeypatch) -> None:
    from kdcore.engine import cpu

    monkeypatch.setattr(cpu, "physical_cores", lambda: 8)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert cpu.default_threads() == 8
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "3")  # a launcher that says how many share the machine
    assert cpu.default_threads() == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the user's, or torchrun's for several processes
    assert cpu.default_threads() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "junk")
    assert cpu.default_threads() == 2
