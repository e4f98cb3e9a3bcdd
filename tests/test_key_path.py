"""Error locations as data: ``UserError.key_path`` names the key a message already starts with,
and a factory's error gets its block's key path in front only when it carries none (the message
text is never parsed)."""

from __future__ import annotations

import types

import pytest

import kdcore
from kdcore.config import load_config
from kdcore.errors import UserError
from kdcore.registry import call_factory
from kdcore.testing import isolated_plugins


def _raises(error: UserError):
    def factory(mode: str = "a"):
        raise error
    return factory


def test_a_located_error_passes_through_and_an_unlocated_one_gets_the_block_path() -> None:
    where = "teachers[0].distill[0].head.losses[0]"
    located = UserError("algorithm.temperature: must be > 0, got 0", key_path="algorithm.temperature")
    with pytest.raises(UserError) as err:
        call_factory(_raises(located), {}, {}, where=where)
    assert err.value is located
    # no key_path: the text is not read, so a message that happens to start with a block name
    # ("teachers ...") still gets its place in front
    with pytest.raises(UserError) as err:
        call_factory(_raises(UserError("teachers must agree")), {}, {}, where=where)
    assert (str(err.value), err.value.key_path) == (f"{where}: teachers must agree", where)
    with pytest.raises(UserError) as err:
        call_factory(_raises(ValueError("bad mode")), {}, {}, where="algorithm")
    assert (str(err.value), err.value.key_path) == ("algorithm: bad mode", "algorithm")


@pytest.mark.parametrize(("params", "key_path", "message"), [
    ({"mdoe": "b"}, "distiller.mdoe", "distiller.mdoe: unknown parameter (did you mean 'mode'?)"),
    ({"num_classes": 3}, "distiller.num_classes", "distiller.num_classes: kdcore passes this value"),
])
def test_parameter_errors_carry_their_key(params: dict, key_path: str, message: str) -> None:
    with pytest.raises(UserError) as err:
        call_factory(_raises(UserError("unreached")), params, {"num_classes": 10}, where="distiller")
    assert err.value.key_path == key_path and str(err.value).startswith(message)


def test_nested_builds_keep_the_innermost_location() -> None:
    module = types.ModuleType("nesting_plugin")

    def outer(inner: str = "gone"):
        return kdcore.build("loss", inner, where="algorithm.peers[0]")

    @kdcore.hookimpl
    def kdcore_losses():
        return [kdcore.Component("outer", outer, "builds another loss")]

    module.kdcore_losses = kdcore_losses
    loaded = isolated_plugins(nesting=module)
    from kdcore.plugins import reset_plugins

    reset_plugins(loaded)
    try:
        with pytest.raises(UserError) as err:
            kdcore.build("loss", "outer", plugins=loaded, where="algorithm")
    finally:
        reset_plugins(None)
    assert err.value.key_path == "algorithm.peers[0]"
    assert str(err.value).startswith("algorithm.peers[0]: unknown loss 'gone'")


@pytest.mark.parametrize(("overrides", "key_path"), [
    (["trainer.epochs=x"], "trainer.epochs"),
    (["trainer.epoch=3"], "trainer.epoch"),
    (["teachers=[{type: cnn_teacher, distill: [{student_module: a, teacher_module: b}]}]"],
     "teachers[0].distill[0].head.losses"),
    (["seed=-1"], "seed"),
])
def test_config_errors_carry_their_key(overrides: list[str], key_path: str) -> None:
    with pytest.raises(UserError) as err:
        load_config({}, overrides)
    assert err.value.key_path == key_path
    assert str(err.value).startswith(f"config key {key_path}: ")


def test_an_in_repo_algorithm_error_is_not_located_twice() -> None:
    from kdcore.models.cnn import cnn_student
    from kdcore.task import ClassificationTask

    config = load_config({"teachers": [], "algorithm": {"type": "dml"}})
    context = {"student": cnn_student(), "task": ClassificationTask(10), "distiller": None,
               "num_classes": 10, "input_shape": (1, 28, 28), "config": config}
    with pytest.raises(UserError) as err:
        kdcore.build("algorithm", "dml", where="algorithm", context=context, kl_weight=-1)
    assert str(err.value) == "algorithm.kl_weight: must be >= 0, got -1"
