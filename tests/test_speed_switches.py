"""amp, channels_last and compile are switches that keep results equal within tolerance."""

from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner

from kdcore.cli import main

pytestmark = pytest.mark.fashion

TINY_OVERRIDES = ["data.train_limit=256", "data.test_limit=256", "trainer.epochs=1",
                  "teachers.0.train.epochs=1", "trainer.progress=false", "data.batch_size=64"]


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


def test_compile_matches(tmp_path, tiny, baseline) -> None:
    pytest.importorskip("torch._dynamo")
    # aot_eager traces the models (taps included) as inductor does, without minutes of C++
    # code generation on a 2-core test machine; inductor is the default for real runs
    row = last_row(tmp_path, tiny, "trainer.compile=true", "trainer.compile_backend=aot_eager")
    assert row["train"]["loss"] == pytest.approx(baseline["train"]["loss"], rel=1e-3)
