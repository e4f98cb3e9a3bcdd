"""Property-based: whatever YAML, ``--set`` override or module path a user writes, kdcore answers
with a valid config (or tap) or a :class:`UserError` of one line, never another exception.

Inputs are random YAML text, mutations of the default preset (keys dropped, renamed, added,
values replaced by odd YAML scalars), random ``--set`` overrides, and random module paths for
the feature taps. A valid config must also survive the round trip through ``config.yaml`` (what
``--resume`` reads back). Example counts are kept small: this runs in every suite.
"""

from __future__ import annotations

import datetime
import os
import tempfile
from typing import Any
from unittest import mock

import pytest
import torch
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kdcore.cli import main
from kdcore.config import RunConfig, dump_yaml, load_config, read_yaml
from kdcore.errors import UserError
from kdcore.models.cnn import cnn_student
from kdcore.taps import FeatureTaps, Tap, module_paths, resolve_module

PRESET = os.path.join(os.path.dirname(__file__), "..", "kdcore", "presets", "teacher_student.yaml")
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

#: Scalars that YAML turns into surprising Python values (or refuses late, in the constructor).
ODD_SCALARS = ["2001-02-30", "2001-02-03", "!!int x", "!!float abc", "!!timestamp 2001-99-99",
               "!!binary aGk=", "!!python/name:os.system", "!!set {a}", ".nan", "-.inf", "1e999",
               "0x1F", "0o17", "1_000", "~", "null", "yes", "on", "'3'", "[1, 2", "{a: 1", "&a [*a]",
               "*undefined", "!!omap [a]", "<<: 1", "²", "٣", "\t", "- - -", "? [a]\n: 1", "%TAG",
               "---\n...", "a: b: c", "\x00", "\ufeffx", "[" * 50 + "]" * 50]
PRESET_PATHS = ["seed", "data.batch_size", "data.train_limit", "data.type", "student.type",
                "teachers.0.name", "teachers.0.checkpoint", "teachers.0.train.epochs",
                "teachers.0.distill.0.student_module", "teachers.0.distill.0.head.losses.0.weight",
                "teachers.0.distill.0.head.losses.0.temperature", "teachers.1.name",
                "optimizer.lr", "optimizer.betas.0", "schedule.type", "schedule.milestones",
                "trainer.epochs", "trainer.on_nonfinite", "trainer.grad_clip", "algorithm", "x"]

yaml_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-10**20, 10**20), st.text(max_size=12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.dates(min_value=datetime.date(1990, 1, 1), max_value=datetime.date(2100, 1, 1)))
yaml_values = st.recursive(yaml_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.one_of(st.text(max_size=8), st.integers()),
                                                 inner, max_size=3)), max_leaves=6)
key_parts = st.one_of(st.sampled_from(["0", "1", "9", "-1", "²", "٣", "x", "", " ", "type", "params"]),
                      st.text(max_size=6))
override_keys = st.one_of(
    st.sampled_from(PRESET_PATHS),
    st.lists(key_parts, min_size=1, max_size=4).map(".".join),
    st.tuples(st.sampled_from(PRESET_PATHS), key_parts).map(lambda kv: f"{kv[0]}.{kv[1]}"))
override_values = st.one_of(st.sampled_from(ODD_SCALARS), st.text(max_size=20),
                            yaml_values.map(lambda v: yaml.safe_dump(v, default_flow_style=True)
                                            .replace("\n...\n", "").strip()))
overrides = st.one_of(
    st.tuples(override_keys, override_values).map(lambda kv: f"{kv[0]}={kv[1]}"),
    st.text(max_size=20))


def preset() -> dict[str, Any]:
    return read_yaml(PRESET)


def check_outcome(build: Any) -> RunConfig | None:
    """The only allowed outcomes: a valid RunConfig that round-trips, or a one-line UserError."""
    try:
        config = build()
    except UserError as exc:
        message = str(exc)
        assert message and "\n" not in message, repr(message)
        return None
    assert isinstance(config, RunConfig)
    again = load_config(yaml.safe_load(dump_yaml(config)))
    assert dump_yaml(again) == dump_yaml(config)
    return config


def paths_in(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path in nested dicts and lists (lists by index)."""
    found = [prefix] if prefix else []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        found += paths_in(value, prefix + (key,))
    return found


@st.composite
def mutated_presets(draw: st.DrawFn) -> dict[str, Any]:
    """The default preset with a few random edits: drop, rename, replace or add a key."""
    data = preset()
    for _ in range(draw(st.integers(1, 3))):
        paths = paths_in(data)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = data
        for part in path[:-1]:
            parent = parent[part]
        key = path[-1]
        action = draw(st.sampled_from(["drop", "rename", "replace", "add"]))
        if action == "drop":
            del parent[key]
        elif action == "rename" and isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=8)) + str(key)[1:]] = parent.pop(key)
        elif action == "add" and isinstance(parent, dict):
            parent[draw(st.text(max_size=8))] = draw(yaml_values)
        else:
            parent[key] = draw(yaml_values)
    return data


@FAST
@given(text=st.one_of(st.text(max_size=80), st.sampled_from(ODD_SCALARS),
                      st.lists(st.sampled_from(ODD_SCALARS + ["trainer:", "  epochs: 2", "seed: 1",
                                                              "teachers: []", "data: {batch_size: 0}"]),
                               max_size=4).map("\n".join)))
def test_random_yaml_text_is_a_config_or_one_line_error(text: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "config.yaml")
        with open(path, "w", encoding="utf-8", errors="surrogatepass") as f:
            f.write(text)
        check_outcome(lambda: load_config(read_yaml(path)))


@FAST
@given(data=mutated_presets())
def test_mutated_preset_is_a_config_or_one_line_error(data: dict[str, Any]) -> None:
    check_outcome(lambda: load_config(data))
    try:
        text = yaml.safe_dump(data)
    except yaml.YAMLError:
        return
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "config.yaml")
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        check_outcome(lambda: load_config(read_yaml(path)))


@FAST
@given(sets=st.lists(overrides, min_size=1, max_size=3))
def test_random_overrides_are_a_config_or_one_line_error(sets: list[str]) -> None:
    check_outcome(lambda: load_config(preset(), sets))


class _Reached(Exception):
    """The stand-in for training: the CLI got a valid config this far."""


@settings(max_examples=12, deadline=None)
@given(sets=st.lists(overrides, max_size=2),
       algo=st.sampled_from([None, "vanilla", "teacher_student", "teacher_studnet", "", "kd"]))
def test_cli_never_shows_a_traceback_for_bad_config(sets: list[str], algo: str | None) -> None:
    cli_args = ["run", "--output-dir", tempfile.gettempdir()]
    cli_args += ["--algo", algo] if algo is not None else []
    cli_args += [a for s in sets for a in ("--set", s)]
    with mock.patch("kdcore.engine.run.run", side_effect=_Reached):
        result = CliRunner().invoke(main, cli_args)
    if isinstance(result.exception, _Reached):
        return
    assert result.exit_code == 2, (result.output, result.exception)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert "Traceback" not in result.output and lines[-1].startswith("kdcore: error: "), lines


def test_odd_scalars_in_overrides_and_files_are_user_errors() -> None:
    """The YAML constructor's own failures (impossible dates, bad !!int) are UserErrors too."""
    assert load_config(preset(), ["name=2001-02-30"]).name == "2001-02-30"
    with pytest.raises(UserError, match="config key seed: expected an integer"):
        load_config(preset(), ["seed=!!int x"])
    with pytest.raises(UserError, match=r"teachers\.² indexes a list; use a number"):
        load_config(preset(), ["teachers.².name=x"])
    with pytest.raises(UserError, match="config key optimizer.lr: expected a finite number, got nan"):
        load_config(preset(), ["optimizer.lr=.nan"])
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "bad.yaml")
        with open(path, "w", encoding="utf-8") as f:
            f.write("seed: 1\ndata: {batch_size: 2001-02-30}\n")
        with pytest.raises(UserError, match=f"config file {path}: .*day is out of range"):
            read_yaml(path)


# --- feature taps ------------------------------------------------------------------------------

MODEL = cnn_student()
VALID = module_paths(MODEL)


@st.composite
def module_path_guesses(draw: st.DrawFn) -> str:
    base = draw(st.sampled_from(VALID))
    edit = draw(st.sampled_from(["keep", "drop", "insert", "suffix", "prefix", "random", "digits"]))
    if edit == "keep":
        return base
    if edit == "drop" and base:
        i = draw(st.integers(0, len(base) - 1))
        return base[:i] + base[i + 1:]
    if edit == "insert":
        i = draw(st.integers(0, len(base)))
        return base[:i] + draw(st.sampled_from([".", "_", "0", "x", "..", " ", "²"])) + base[i:]
    if edit == "suffix":
        return base + draw(st.sampled_from([".", ".0", ".conv", ".relu.x", "[0]", ":input"]))
    if edit == "prefix":
        return draw(st.sampled_from(["model.", ".", "module.", "student."])) + base
    if edit == "digits":
        return ".".join(draw(st.lists(st.sampled_from(["0", "1", "stage1", ""]), min_size=1, max_size=3)))
    return draw(st.text(max_size=12))


@FAST
@given(path=module_path_guesses(), io=st.sampled_from(["output", "input"]))
def test_random_module_paths_tap_or_fail_in_one_line(path: str, io: str) -> None:
    try:
        taps = FeatureTaps(MODEL, [Tap("stage1"), Tap(path, io)], where="student_module")
    except UserError as exc:
        message = str(exc)
        if (path, io) == ("output", "input"):
            assert message.startswith("student_module 'output' is the model's return value, which has no input")
        else:
            assert path not in VALID
            assert message.startswith(f"student_module {path!r} does not exist in SmallCNN; closest paths: ")
        assert "\n" not in message
        assert not any(m._forward_hooks for m in MODEL.modules()), "a failed tap left a hook behind"
        return
    assert path in VALID
    with taps, torch.no_grad():
        out = MODEL(torch.zeros(2, 1, 28, 28))
        taps.record_output(out)
        assert torch.is_tensor(taps[Tap(path, io)])
    assert not any(m._forward_hooks for m in MODEL.modules())


@FAST
@given(path=st.one_of(module_path_guesses(), st.text(max_size=20)))
def test_resolve_module_returns_the_module_or_a_user_error(path: str) -> None:
    modules = dict(MODEL.named_modules())
    try:
        found = resolve_module(MODEL, path)
    except UserError as exc:
        assert path not in modules or path == "", path
        assert repr(path) in str(exc)
        return
    assert found is modules[path]


# --- absurd magnitudes (issue #19): huge, tiny and long values of the right type ------------------

NUMERIC_KEYS = ["seed", "data.batch_size", "data.eval_batch_size", "data.train_limit", "data.test_limit",
                "data.val_split", "trainer.epochs", "trainer.threads", "trainer.checkpoint_every",
                "trainer.max_skipped_in_row", "trainer.grad_clip", "optimizer.lr", "optimizer.momentum",
                "optimizer.weight_decay", "schedule.warmup_epochs", "teachers.0.train.epochs",
                "teachers.0.train.seed", "teachers.0.train.batch_size",
                "teachers.0.distill.0.head.losses.0.weight"]
TEXT_KEYS = ["name", "output_dir", "trainer.device", "trainer.amp", "student.type", "teachers.0.name"]
absurd_numbers = st.one_of(
    st.sampled_from([2**31, 2**32, 2**32 - 1, 2**53 + 1, 2**63 - 1, 2**63, 2**64, 2**64 + 1, -2**63,
                     10**21, 10**100, -1, 0, 1e21, 1e300, -1e300, 5e-324, 1e-320, 100000, 5000]),
    st.integers(-10**40, 10**40), st.floats(allow_nan=False, allow_infinity=False))
absurd_texts = st.one_of(
    st.integers(200, 300).map(lambda n: "n" * n), st.integers(1, 3).map(lambda k: "é" * (100 * k)),
    st.sampled_from(["x" * 100_000, "/tmp/" + "d" * 300, "a/" * 2000, "\u0000" * 10]))


def assert_within_documented_bounds(config: RunConfig) -> None:
    """What a config that loads promises (docs/config.md): sizes a run can use."""
    assert 0 <= config.seed <= 2**32 - 1
    assert all(0 <= t.train.seed <= 2**32 - 1 for t in config.teachers)
    assert 0 <= config.trainer.epochs <= 1_000_000
    assert config.trainer.threads is None or 0 <= config.trainer.threads <= 4 * (os.cpu_count() or 1)
    assert config.name is None or len(config.name.encode("utf-8", "surrogatepass")) <= 200
    assert all(len(part.encode("utf-8", "surrogatepass")) <= 255 for part in config.output_dir.split("/"))


@FAST
@given(key=st.sampled_from(NUMERIC_KEYS), value=absurd_numbers)
def test_absurd_numbers_are_a_bounded_config_or_one_short_line(key: str, value: Any) -> None:
    for build in (lambda: load_config(preset(), [f"{key}={value!r}"]),
                  lambda: load_config(_set(preset(), key, value))):
        try:
            build()
        except UserError as exc:
            assert len(str(exc)) < 1000, str(exc)[:200]
        config = check_outcome(build)
        if config is not None:
            assert_within_documented_bounds(config)


@FAST
@given(key=st.sampled_from(TEXT_KEYS), value=absurd_texts)
def test_absurd_texts_are_a_bounded_config_or_one_short_line(key: str, value: str) -> None:
    try:
        config = load_config(_set(preset(), key, value))
    except UserError as exc:
        message = str(exc)
        assert "\n" not in message and len(message) < 1000, (len(message), message[:200])
        return
    assert_within_documented_bounds(config)


def _set(data: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    """``data`` with ``key`` (a dotted path, list indices as numbers) set to ``value``."""
    node: Any = data
    parts = key.split(".")
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    node[int(parts[-1]) if isinstance(node, list) else parts[-1]] = value
    return data
