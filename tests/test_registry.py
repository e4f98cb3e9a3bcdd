"""Building components by name: ids, ambiguity, unknown names, parameter checks."""

from __future__ import annotations

import types

import pytest
import torch

import kdcore
from kdcore.plugins import Plugins
from kdcore.registry import build, components, lookup


def make_plugin(loss_name: str) -> types.ModuleType:
    module = types.ModuleType(f"fake_{loss_name}")

    class Scaled(kdcore.Loss):
        def __init__(self, scale: float = 1.0) -> None:
            super().__init__()
            self.scale = scale

        def forward(self, student, teacher, **extra):
            return self.scale * (student - teacher).abs().mean()

    @kdcore.hookimpl
    def kdcore_losses():
        return [kdcore.Component(loss_name, Scaled, "scaled L1")]

    module.kdcore_losses = kdcore_losses
    return module


@pytest.fixture
def plugins() -> Plugins:
    loaded = Plugins(load_entry_points=False)
    loaded.register(make_plugin("l1x"), "alpha")
    return loaded


def test_builtins_register_through_the_same_hooks(plugins: Plugins) -> None:
    ids = {r.id for r in components("connector", plugins)}
    assert {"kdcore:identity", "kdcore:linear", "kdcore:conv1x1_bn"} <= ids
    assert {r.id for r in components("algorithm", plugins)} >= {"kdcore:vanilla", "kdcore:teacher_student"}


def test_short_name_and_id_build_the_same(plugins: Plugins) -> None:
    a = build("loss", "l1x", plugins=plugins, scale=2.0)
    b = build("loss", "alpha:l1x", plugins=plugins, scale=2.0)
    s, t = torch.ones(2, 3), torch.zeros(2, 3)
    assert float(a(s, t)) == float(b(s, t)) == 2.0


def test_ambiguous_short_name_lists_every_provider(plugins: Plugins) -> None:
    plugins.register(make_plugin("l1x"), "beta")
    with pytest.raises(kdcore.UserError) as info:
        lookup("loss", "l1x", plugins)
    assert "ambiguous, provided by alpha:l1x, beta:l1x" in str(info.value)
    assert lookup("loss", "beta:l1x", plugins).plugin == "beta"


def test_unknown_name_and_unknown_parameter_suggest(plugins: Plugins) -> None:
    with pytest.raises(kdcore.UserError, match=r"unknown loss 'l1' \(did you mean 'l1x'"):
        build("loss", "l1", plugins=plugins)
    with pytest.raises(kdcore.UserError, match=r"x\.scal: unknown parameter \(did you mean 'scale'\?\)"):
        build("loss", "l1x", plugins=plugins, where="x", scal=2)


def test_missing_kd_plugin_says_how_to_install(plugins: Plugins) -> None:
    with pytest.raises(kdcore.UserError, match="pip install ./plugins/kdcore-plugin-kd"):
        build("loss", "kd", plugins=plugins)


def test_context_is_passed_only_when_named(plugins: Plugins) -> None:
    linear = build("connector", "linear", plugins=plugins,
                   context={"in_shape": (4, 2), "out_shape": (3,), "unused": 1})
    assert linear(torch.zeros(5, 4, 2)).shape == (5, 3)


def test_hook_that_raises_is_isolated(plugins: Plugins) -> None:
    broken = types.ModuleType("broken")

    @kdcore.hookimpl
    def kdcore_losses():
        raise RuntimeError("boom")

    broken.kdcore_losses = kdcore_losses
    plugins.register(broken, "broken")
    assert any(r.id == "alpha:l1x" for r in components("loss", plugins))
    assert "boom" in plugins.status["broken"].warnings[0]


def test_unknown_kind() -> None:
    with pytest.raises(kdcore.UserError, match="did you mean 'loss'"):
        components("losss")


def test_every_hookspec_is_documented_with_an_example() -> None:
    from kdcore import hookspecs

    specs = [getattr(hookspecs, n) for n in dir(hookspecs) if n.startswith("kdcore_")]
    assert len(specs) == len(kdcore.KINDS)
    for spec in specs:
        doc = spec.__doc__ or ""
        assert "Example::" in doc and "@kdcore.hookimpl" in doc, spec.__name__
