"""Building components by name: ids, name clashes, unknown names, parameter checks, presets."""

from __future__ import annotations

import os
import types
from pathlib import Path

import pytest
import torch

import kdcore
from kdcore.plugins import Plugins, PluginStatus
from kdcore.registry import RESERVED_PARAMS, build, check_factories, components, lookup


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


def test_a_clash_leaves_the_name_with_the_first_plugin(plugins: Plugins) -> None:
    """Installing a plugin never takes a name a config already uses: the newcomer's component
    is reachable by its id, and the clash is a warning of the newcomer."""
    plugins.register(make_plugin("l1x"), "beta")
    assert lookup("loss", "l1x", plugins).plugin == "alpha"
    assert lookup("loss", "beta:l1x", plugins).plugin == "beta"
    assert plugins.status["beta"].warnings == [
        "loss 'l1x' is also provided by alpha:l1x, which keeps the short name; this plugin's is "
        "reachable as beta:l1x"]
    assert not plugins.status["alpha"].warnings and plugins.troubled() == ["beta"]


def test_a_plugin_cannot_take_a_builtin_name(plugins: Plugins) -> None:
    plugins.register(make_plugin("kd"), "rogue")
    assert lookup("loss", "kd", plugins).id == "kdcore:kd"
    assert isinstance(build("loss", "rogue:kd", plugins=plugins), torch.nn.Module)
    assert "is also provided by kdcore:kd, which keeps the short name" in plugins.status["rogue"].warnings[0]


def test_installed_plugins_rank_by_install_time() -> None:
    loaded = Plugins(load_entry_points=False)
    loaded.status["new"] = PluginStatus("new", "dist-new", "1.0", installed_at=200.0)
    loaded.status["old"] = PluginStatus("old", "dist-old", "1.0", installed_at=100.0)
    ranked = sorted(["new", "kdcore", "old"], key=loaded.precedence)
    assert ranked == ["kdcore", "old", "new"]


def test_unknown_name_and_unknown_parameter_suggest(plugins: Plugins) -> None:
    with pytest.raises(kdcore.UserError, match=r"unknown loss 'l1' \(did you mean 'l1x'"):
        build("loss", "l1", plugins=plugins)
    with pytest.raises(kdcore.UserError, match=r"x\.scal: unknown parameter \(did you mean 'scale'\?\)"):
        build("loss", "l1x", plugins=plugins, where="x", scal=2)


def test_kd_is_builtin_and_a_missing_plugin_names_its_distribution(plugins: Plugins) -> None:
    assert lookup("loss", "kd", plugins).id == "kdcore:kd"  # the default job needs no plugin
    with pytest.raises(kdcore.UserError) as info:
        build("loss", "rkd", plugins=plugins)
    message = str(info.value)
    assert "it is provided by kdcore-plugin-rkd: pip install kdcore-plugin-rkd" in message
    here = os.path.relpath(Path(kdcore.__file__).parents[1] / "plugins" / "kdcore-plugin-rkd")
    if (Path(here) / "pyproject.toml").is_file():  # a checkout: its folder too
        assert f"(in this checkout: pip install -e ./{here})" in message


def test_build_takes_factory_parameters_named_kind_and_name(plugins: Plugins) -> None:
    module = types.ModuleType("named")

    @kdcore.hookimpl
    def kdcore_models():
        return [kdcore.Component("named_net", lambda kind="a", name="b": torch.nn.Linear(1, 1))]

    module.kdcore_models = kdcore_models
    plugins.register(module, "named")
    assert isinstance(build("model", "named_net", plugins=plugins, kind="x", name="y"), torch.nn.Linear)
    assert RESERVED_PARAMS == {"plugins", "where", "context", "_block_keys"}


def test_check_factories_imports_every_factory_string(plugins: Plugins) -> None:
    module = types.ModuleType("typo")

    @kdcore.hookimpl
    def kdcore_losses():
        return [kdcore.Component("clash_loss", "kdcore.builtin.losses:KDLos", "typo'd factory")]

    @kdcore.hookimpl
    def kdcore_presets():
        return [kdcore.Preset("gone", "kdcore:presets/missing.yaml")]

    module.kdcore_losses, module.kdcore_presets = kdcore_losses, kdcore_presets
    plugins.register(module, "typo")
    assert not plugins.status["typo"].warnings  # listing imports nothing
    check_factories(plugins)
    warnings = plugins.status["typo"].warnings
    assert any("loss 'clash_loss': factory 'kdcore.builtin.losses:KDLos' cannot be loaded: "
               "AttributeError" in w for w in warnings), warnings
    assert any("preset 'gone': preset file 'kdcore:presets/missing.yaml' cannot be loaded: "
               "FileNotFoundError" in w for w in warnings), warnings
    assert not plugins.status["alpha"].warnings


def test_presets_are_listed_and_resolved_not_built(plugins: Plugins) -> None:
    preset = lookup("preset", "teacher_student", plugins)
    assert preset.id == "kdcore:teacher_student" and Path(preset.component.resolve()).is_file()
    with pytest.raises(kdcore.UserError, match="kdcore run --preset teacher_student"):
        build("preset", "teacher_student", plugins=plugins)


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
