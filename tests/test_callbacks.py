"""Training callbacks (the ``kdcore_callbacks`` hook, ``trainer.callbacks``): built on every
process with the user's parameters and the config, ``check`` before any model is built,
``before_training`` once the batches exist (a resumed run too), missing methods skipped; a
refusal, an unknown name and ``--teacher-cache`` without its plugin are one line."""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner

import kdcore
import kdcore.engine.run
from kdcore.cli import main
from kdcore.errors import UserError
from kdcore.testing import isolated_plugins, using_plugins

from cli_runs import error_line, invoke_with, only_run_dir, run_files, sets

pytestmark = pytest.mark.fashion

EVENTS: list[tuple[Any, ...]] = []


class Recorder:
    """Records what each method is given, and says when training is about to start."""

    def __init__(self, tag: str, config: dict[str, Any]) -> None:
        EVENTS.append(("built", tag, config["trainer"]["epochs"]))

    def check(self, splits: Any, augment: Any) -> None:
        EVENTS.append(("check", len(splits.student_train), augment))

    def before_training(self, algorithm: Any, batches: Any, teachers: dict[str, Any],
                        device: Any, log: Any) -> None:
        EVENTS.append(("before_training", isinstance(algorithm, kdcore.Algorithm), len(batches),
                       sorted(teachers), teachers["teacher"].checkpoint, device.type))
        log("recorder: the batches are ready")


class Refuser:
    def check(self, splits: Any, augment: Any) -> None:
        raise UserError("refuser: this config is not for me")

    def before_training(self, **anything: Any) -> None:
        pytest.fail("a refused run never gets here")


def fake_rows(indices: torch.Tensor) -> torch.Tensor:
    """What the fake cache holds for each sample: logits no teacher computes (row i is i/100)."""
    return indices.to(torch.float32)[:, None] / 100 + torch.zeros(10)


class FakeCache:
    """A teacher's output cache: its ``output`` tap for the asked samples, with each call noted."""

    def __init__(self, name: str) -> None:
        self.name = name

    def rows(self, indices: torch.Tensor, device: torch.device) -> dict[str, torch.Tensor]:
        EVENTS.append(("rows", self.name, indices.tolist()))
        return {"output": fake_rows(indices).to(device)}


class Caching:
    """Fills ``distiller.caches`` for the teachers named in ``cached``, as
    kdcore-plugin-teacher-cache does, and notes every forward of every teacher from then on."""

    def __init__(self, cached: list[str]) -> None:
        self.cached = cached

    def before_training(self, algorithm: Any, **rest: Any) -> None:
        for name, teacher in algorithm.distiller.teachers.items():
            teacher.forward = self.noted(name, teacher.forward)
        for name in self.cached:
            algorithm.distiller.caches[name] = FakeCache(name)

    @staticmethod
    def noted(name: str, forward: Any) -> Any:
        def forward_noted(*args: Any, **kwargs: Any) -> Any:
            EVENTS.append(("forward", name))
            return forward(*args, **kwargs)
        return forward_noted


class Probe(kdcore.Loss):
    """A distill loss that notes the teacher features and samples it is given."""

    def __init__(self, tag: str) -> None:
        super().__init__()
        self.tag = tag

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, **extra: Any) -> torch.Tensor:
        EVENTS.append(("loss", self.tag, teacher.detach().clone(), extra["indices"].tolist()))
        return (student - teacher).pow(2).mean()


def callbacks_plugin() -> types.ModuleType:
    module = types.ModuleType("callbacks_plugin")

    @kdcore.hookimpl
    def kdcore_callbacks():
        return [kdcore.Component("recorder", Recorder, "records its calls"),
                kdcore.Component("refuser", Refuser, "refuses every config"),
                kdcore.Component("nothing", object, "defines neither method"),
                kdcore.Component("caching", Caching, "fills distiller.caches with fake rows")]

    @kdcore.hookimpl
    def kdcore_losses():
        return [kdcore.Component("probe", Probe, "notes what it is given")]

    module.kdcore_callbacks = kdcore_callbacks
    module.kdcore_losses = kdcore_losses
    return module


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return run_files(tmp_path_factory.mktemp("callbacks"))


@pytest.fixture
def events(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    """EVENTS, with every model the run builds recorded as ``("model", where)``."""
    EVENTS.clear()
    build_model = kdcore.engine.run.build_model

    def recorded(config: Any, source: Any, where: str) -> Any:
        EVENTS.append(("model", where))
        return build_model(config, source, where)

    monkeypatch.setattr(kdcore.engine.run, "build_model", recorded)
    return EVENTS


def invoke(*args: str) -> Any:
    return invoke_with(callbacks_plugin(), "callbacks_plugin", list(args))


def test_both_methods_are_called_in_order_with_what_they_promise(files, tmp_path, events) -> None:
    out = str(tmp_path / "runs")
    result = invoke("run", "--output-dir", out, *sets(
        files, "trainer.epochs=1", "trainer.callbacks=[nothing, {type: recorder, tag: first}]"))
    assert result.exit_code == 0, result.output
    assert [e[0] for e in events[:2]] == ["built", "check"] and events[0] == ("built", "first", 1)
    assert events[1] == ("check", 256, None)
    assert events[2][0] == "model"  # no model before check (check_assembly's come first)
    assert events[-1] == ("before_training", True, 4, ["teacher"], str(files["teacher"]), "cpu")
    assert [e[0] for e in events].count("before_training") == 1
    lines = result.output.splitlines()
    assert lines.index("recorder: the batches are ready") < next(
        i for i, line in enumerate(lines) if line.startswith("epoch 1/1"))

    events.clear()  # a resumed run gets both again, before its first epoch
    resumed = invoke("run", "--resume", str(only_run_dir(tmp_path / "runs")), "--set", "trainer.epochs=2")
    assert resumed.exit_code == 0, resumed.output
    assert [e[0] for e in events if e[0] != "model"] == ["built", "check", "before_training"]
    assert events[0] == ("built", "first", 2)


def test_a_callback_that_refuses_stops_the_run_in_one_line_before_any_model(files, tmp_path, events) -> None:
    result = invoke("run", "--output-dir", str(tmp_path / "runs"), *sets(
        files, "trainer.callbacks=[{type: recorder, tag: a}, refuser]"))
    assert error_line(result, 2) == "kdcore: error: refuser: this config is not for me"
    assert result.output.strip().splitlines() == ["kdcore: error: refuser: this config is not for me"]
    assert events == [("built", "a", 2), ("check", 256, None)]  # built, checked, refused: no model
    assert not (tmp_path / "runs").exists()  # and no run dir


def test_the_distiller_reads_a_cached_teacher_from_its_cache_and_computes_the_others(files, tmp_path) -> None:
    """The core's ``Distiller.caches`` seam, which only kdcore-plugin-teacher-cache fills: a
    cached teacher's features are the cache's rows for the batch's samples, and it never runs
    while training; an uncached teacher beside it still runs every step."""
    EVENTS.clear()
    teacher = ("{type: cnn_teacher, name: %s, checkpoint: " + str(files["teacher"]) + ", distill: [{"
               "student_module: output, teacher_module: output, head: {losses: [{type: probe, tag: %s}]}}]}")
    teachers = f"teachers=[{teacher % ('cached', 'cached')}, {teacher % ('live', 'live')}]"
    result = invoke("run", "--output-dir", str(tmp_path / "runs"), *sets(
        files, "trainer.epochs=1", teachers, "trainer.callbacks=[{type: caching, cached: [cached]}]"))
    assert result.exit_code == 0, result.output
    last_loss = max(i for i, e in enumerate(EVENTS) if e[0] == "loss")
    training = EVENTS[:last_loss + 1]
    cached = [e for e in training if e[0] == "loss" and e[1] == "cached"]
    live = [e for e in training if e[0] == "loss" and e[1] == "live"]
    assert len(cached) == len(live) == 4  # 256 images, batches of 64, one epoch
    asked = [e[2] for e in training if e[0] == "rows"]
    assert asked == [e[3] for e in cached]  # one cache read per step, for that step's samples
    assert sorted(i for rows in asked for i in rows) == list(range(256))
    for _, _, features, indices in cached:
        assert torch.equal(features, fake_rows(torch.tensor(indices)))
    for _, _, features, indices in live:
        assert features.shape == (len(indices), 10)
        assert not torch.allclose(features, fake_rows(torch.tensor(indices)))
    assert ("forward", "cached") not in training
    assert [e for e in training if e[0] == "forward"] == [("forward", "live")] * 4


def test_an_unknown_callback_is_one_line_naming_its_key(files, tmp_path) -> None:
    result = invoke("run", "--output-dir", str(tmp_path / "runs"),
                    *sets(files, "trainer.callbacks=[recorderr]"))
    line = error_line(result, 2)
    assert line.startswith("kdcore: error: trainer.callbacks[0]: unknown callback 'recorderr' "
                           "(did you mean 'recorder'"), line
    printed = invoke("run", "--print-config", *sets(files, "trainer.callbacks=[{type: recorder, tagg: x}]"))
    assert "trainer.callbacks[0].tagg: unknown key (did you mean 'tag'" in error_line(printed, 2)


def test_teacher_cache_without_its_plugin_says_how_to_install_it(files, tmp_path) -> None:
    with using_plugins(isolated_plugins()):  # the core alone, as if the plugin were not installed
        result = CliRunner().invoke(main, ["run", "--teacher-cache", "--output-dir", str(tmp_path / "runs"),
                                           *sets(files)])
    line = error_line(result, 2)
    assert result.output.strip().splitlines() == [line]
    assert line.startswith("kdcore: error: trainer.teacher_cache: unknown callback 'teacher_cache'; it is "
                           "provided by kdcore-plugin-teacher-cache: pip install kdcore-plugin-teacher-cache")


def test_teacher_cache_true_is_short_for_the_callback_listed_once() -> None:
    from kdcore.callbacks import callback_configs
    from kdcore.config import load_config

    def listed(*items: str) -> list[tuple[str, str, dict[str, Any]]]:
        return [(where, block.type, block.params)
                for where, block in callback_configs(load_config({}, list(items)))]

    assert listed() == []
    assert listed("trainer.teacher_cache=true", "trainer.callbacks=[recorder]") == [
        ("trainer.callbacks[0]", "recorder", {}), ("trainer.teacher_cache", "teacher_cache", {})]
    assert listed("trainer.teacher_cache=true", "trainer.callbacks=[{type: teacher_cache, a: 1}]") == [
        ("trainer.callbacks[0]", "teacher_cache", {"a": 1})]
