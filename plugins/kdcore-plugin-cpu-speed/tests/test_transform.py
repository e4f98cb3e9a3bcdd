"""``trainer.model_transforms: [fast_max_pool]`` reaches student, teachers and teacher training,
and changes speed, not results."""

from __future__ import annotations

import json
import os
from importlib import resources

import pytest
import torch
from click.testing import CliRunner

from kdcore.assemble import build_algorithm, load_data
from kdcore.cli import main
from kdcore.config import load_config, read_yaml
from kdcore.engine.run import speed_up
from kdcore.errors import UserError
from kdcore.models.cnn import cnn_student, cnn_teacher
from kdcore_plugin_cpu_speed.fast_max_pool import FastMaxPool2d

FASHION = "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz"
needs_data = pytest.mark.skipif(not os.path.exists(FASHION), reason="needs dataset-fashion-mnist")
TINY = ["data.train_limit=128", "data.test_limit=128", "trainer.epochs=1", "teachers.0.train.epochs=1",
        "teachers.0.train.train_limit=256", "trainer.progress=false", "data.batch_size=64"]
PRESET = str(resources.files("kdcore") / "presets" / "teacher_student.yaml")


@needs_data
def test_speed_up_swaps_the_pools_of_student_and_teachers_only_when_listed() -> None:
    for listed in ([], ["trainer.model_transforms=[fast_max_pool]"]):
        config = load_config(read_yaml(PRESET), [*TINY, *listed])
        algorithm = build_algorithm(config, load_data(config.data), cnn_student(),
                                    {config.teachers[0].name: cnn_teacher()})
        speed_up(algorithm, config, torch.device("cpu"))
        teacher = next(iter(algorithm.distiller.teachers.values()))
        for model in (algorithm.student, teacher):
            assert (type(model.stage1.pool) is FastMaxPool2d) is bool(listed)
        algorithm.remove_taps()


def _last_row(tmp_path, *extra: str) -> tuple[dict, str]:
    args = ["run", "--output-dir", str(tmp_path)]
    for item in [*TINY, *extra]:
        args += ["--set", item]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    run_dir = result.output.strip().splitlines()[-1][len("run dir: "):]
    return [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))][-1], result.output


@needs_data
def test_the_transform_changes_speed_not_results(tmp_path, monkeypatch) -> None:
    # each arm trains its own teacher (a cache of its own), the second with the C kernel
    monkeypatch.setenv("KDCORE_CACHE_DIR", str(tmp_path / "cache-a"))
    plain, _ = _last_row(tmp_path / "a")
    monkeypatch.setenv("KDCORE_CACHE_DIR", str(tmp_path / "cache-b"))
    fast, output = _last_row(tmp_path / "b", "trainer.model_transforms=[fast_max_pool]")
    assert "fast_max_pool changed 2 modules of the teacher training" in output
    assert "fast_max_pool changed 2 modules of the student" in output
    timings = {"seconds", "images_per_second"}
    values = {k: v for k, v in fast["train"].items() if k not in timings}
    assert values == {k: v for k, v in plain["train"].items() if k not in timings}
    assert fast["student"] == plain["student"]


def test_the_old_switch_names_where_it_went() -> None:
    with pytest.raises(UserError, match=r"trainer.fast_max_pool: moved out of the core .* kdcore-plugin-cpu-speed"):
        load_config({}, ["trainer.fast_max_pool=true"])
