"""A callback that fails is one line naming it and its key, and a callback named twice (the
``trainer.teacher_cache`` shorthand and ``trainer.callbacks``) runs once."""

from __future__ import annotations

import types

import pytest
from cli_runs import error_line, invoke_with

import kdcore

pytestmark = pytest.mark.fashion

TINY = ["--preset", "vanilla", "--set", "data.train_limit=256", "--set", "data.test_limit=128",
        "--set", "trainer.epochs=1", "--set", "trainer.progress=false"]
CALLS: list[str] = []


class Boom:
    def check(self, splits, augment):
        raise RuntimeError("boom in check")


class Counting:
    def before_training(self, algorithm, batches, teachers, device, log):
        CALLS.append("before_training")


def plugin(**factories) -> types.ModuleType:
    module = types.ModuleType("callback_plugin")

    @kdcore.hookimpl
    def kdcore_callbacks():
        return [kdcore.Component(name, factory) for name, factory in factories.items()]

    module.kdcore_callbacks = kdcore_callbacks
    return module


def test_a_callback_that_raises_is_one_line_naming_it(tmp_path) -> None:
    result = invoke_with(plugin(boom=Boom), "fails", [
        "run", *TINY, "--set", "trainer.callbacks=[boom]", "--output-dir", str(tmp_path)])
    line = error_line(result, 2)
    assert line == ("kdcore: error: trainer.callbacks[0]: callback 'fails:boom' failed in check: "
                    "RuntimeError: boom in check; this is a bug in its plugin (tell its authors, "
                    "or leave it out of the config)")


def test_a_callback_named_by_short_name_and_by_id_runs_once(tmp_path) -> None:
    CALLS.clear()
    result = invoke_with(plugin(counting=Counting), "counts", [
        "run", *TINY, "--set", "trainer.callbacks=[counting, 'counts:counting']",
        "--output-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert CALLS == ["before_training"]
