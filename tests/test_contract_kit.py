"""kdcore.testing, the plugin authors' contract kit: the core's own components pass it, and each
check fails, with a message saying what to fix, on a component that breaks that contract."""

from __future__ import annotations

import random
import sys
import types
import unittest
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import kdcore
from kdcore import testing
from kdcore.components.distiller import freeze
from kdcore.data import DataSource, TensorSplit
from kdcore.plugins import Plugins
from kdcore.testing import install_dist_info, isolated_plugins

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "plugins"


# --- components for the kit to judge -----------------------------------------------------------

class FakeLoss(kdcore.Loss):
    """Base of the fakes; no __init__ of its own, so it takes no parameters."""


class GoodLoss(FakeLoss):
    """Squared error: passes every loss check."""

    def forward(self, student, teacher, **extra):
        return (student - teacher).pow(2).mean()


class VectorLoss(FakeLoss):
    def forward(self, student, teacher, **extra):
        return (student - teacher).pow(2).flatten(1).mean(1)  # one value per sample


class DetachedLoss(FakeLoss):
    def forward(self, student, teacher, **extra):
        return (student.detach() - teacher).pow(2).mean()


class ZeroGradLoss(FakeLoss):
    def forward(self, student, teacher, **extra):
        return (student * 0).sum() + teacher.mean()


class InPlaceLoss(FakeLoss):
    def forward(self, student, teacher, **extra):
        teacher.mul_(2.0)
        return (student - teacher).pow(2).mean()


class NoExtraLoss(FakeLoss):
    def forward(self, student, teacher):
        return (student - teacher).pow(2).mean()


class UnseededLoss(FakeLoss):
    """Draws noise from Python's RNG, which the seed does not control."""

    def forward(self, student, teacher, **extra):
        return (student - teacher).pow(2).mean() * (1 + random.random())


class CountingLoss(kdcore.Loss):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, student, teacher, **extra):
        self.calls += 1
        return (student - teacher).pow(2).mean() * self.calls


class PlainAttributeLoss(kdcore.Loss):
    """A random projection kept as a plain attribute: not saved in checkpoints."""

    def __init__(self, student_shape=(10,)) -> None:
        super().__init__()
        self.projection = torch.randn(student_shape[-1], 4)

    def forward(self, student, teacher, **extra):
        return (student @ self.projection - teacher @ self.projection).pow(2).mean()


class MatmulLoss(FakeLoss):
    """Fails with torch's RuntimeError on mismatched shapes instead of a clear error."""

    same_shape = False

    def forward(self, student, teacher, **extra):
        return (student @ teacher.t()).pow(2).mean()


class UnfreezingLoss(kdcore.Loss):
    def __init__(self, teacher_module=None) -> None:
        super().__init__()
        self.teacher_module = [teacher_module]  # a list, so it is not registered as a submodule

    def forward(self, student, teacher, **extra):
        module = self.teacher_module[0]
        if module is not None:
            module.train()
            module.requires_grad_(True)
        return (student - teacher).pow(2).mean()


class BadStageLoss(GoodLoss):
    def stages(self, head):
        return [kdcore.PreTraining("teacher_only", 1, lambda s, t, **extra: t.pow(2).mean(), needs_student=False)]


class WhereLoss(FakeLoss):
    """Takes a parameter named like one of kdcore.build's own options."""

    def __init__(self, where: str = "x") -> None:
        super().__init__()


class BatchStdLoss(FakeLoss):
    def forward(self, student, teacher, **extra):
        diff = student - teacher
        spread = (diff - diff.mean(0)).pow(2).sum(0) / (len(diff) - 1)  # 0/0 = NaN for one sample
        return spread.mean()


def needs_scale(scale: float) -> GoodLoss:
    return GoodLoss()


class WrongShapeConnector(kdcore.Connector):
    def __init__(self, in_shape, out_shape) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_shape[0], in_shape[0], 1)

    def forward(self, x):
        return self.conv(x)


class IdleParamConnector(kdcore.Connector):
    def __init__(self, in_shape, out_shape) -> None:
        super().__init__()
        self.unused = nn.Parameter(torch.ones(1))

    def forward(self, x):
        return torch.nn.functional.adaptive_avg_pool2d(x.repeat(1, 2, 1, 1), out_shape_hw(x))


def out_shape_hw(x):
    return x.shape[-2:]


class VectorTermHead(kdcore.DistillationHead):
    def forward(self, student, teacher, **extra):
        return {"per_sample": (student - teacher).pow(2).flatten(1).mean(1)}


class WakingDistiller(kdcore.Distiller):
    """Lets ``train()`` reach the teachers (their BatchNorm statistics then drift)."""

    def train(self, mode=True):
        return nn.Module.train(self, mode)


class DetachedAlgorithm(kdcore.Algorithm):
    def training_step(self, batch, *, epoch, step):
        with torch.no_grad():
            outputs = self.student(batch.inputs)
        return {"task": self.task.loss(outputs, batch.targets).requires_grad_(True)}


class TwoHalves(kdcore.Algorithm):
    """Owns its step: the student's body and its classifier, each with its own optimizer."""

    skip_update: str | None = None  # an optimizer the step forgets
    leave_out: str | None = None  # a parameter prefix optimizers() forgets

    def optimizers(self, build):
        groups = {"body": [], "head": []}
        for name, param in self.student.named_parameters():
            if self.leave_out is None or not name.startswith(self.leave_out):
                groups["head" if name.startswith("fc") else "body"].append(param)
        return {name: build([{"params": params}]) for name, params in groups.items()}

    def optimization_step(self, batch, *, epoch, step, update):
        terms = {}
        for name in ("body", "head"):
            loss = self.task.loss(self.student(batch.inputs), batch.targets)
            if name != self.skip_update:
                update(loss, name)
            terms[name] = loss.detach()
        return terms


class ForgetfulStep(TwoHalves):
    skip_update = "head"


class MissingParameter(TwoHalves):
    leave_out = "fc"


class UnknownOptimizer(TwoHalves):
    """Updates an optimizer its optimizers() does not have."""

    def optimization_step(self, batch, *, epoch, step, update):
        loss = self.task.loss(self.student(batch.inputs), batch.targets)
        update(loss, "generator")
        return {"task": loss.detach()}


class UnnamedOptimizer(TwoHalves):
    """Names an optimizer "": the run refuses it, so the kit must too."""

    def optimizers(self, build):
        return {"": build([{"params": list(self.student.parameters())}])}


class TeacherTrainingAlgorithm(kdcore.Algorithm):
    def __init__(self, student, task, distiller=None) -> None:
        super().__init__(student, task, distiller)
        for teacher in distiller.teachers.values():
            teacher.requires_grad_(True)

    def training_step(self, batch, *, epoch, step):
        terms = {"task": self.task.loss(self.student(batch.inputs), batch.targets)}
        for name, teacher in self.distiller.teachers.items():
            terms[name] = self.task.loss(teacher(batch.inputs), batch.targets)
        return terms


def fixed_classes_model(num_classes: int = 10, in_channels: int = 1):
    return testing.tiny_cnn()  # ignores num_classes


class IdleLayerModel(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.body = testing.tiny_cnn()
        self.aux = nn.Linear(8, num_classes)  # never used in forward

    def forward(self, x):
        return self.body(x)


def _source(fingerprint: str, size: int = 28) -> DataSource:
    split = TensorSplit(torch.randn(6, 1, size, size), torch.randint(0, 10, (6,)))
    return DataSource(split, split, kdcore.ClassificationTask(10), (1, 28, 28), 10, fingerprint, "fake")


def good_data() -> DataSource:
    return _source("fixed")


def unstable_data() -> DataSource:
    return _source(str(random.random()))


def small_images_data() -> DataSource:
    return _source("fixed", size=14)


def _module() -> types.ModuleType:
    C = kdcore.Component
    module = types.ModuleType("kit_fakes")
    hooks = {
        "kdcore_losses": [C("good", GoodLoss, "squared error"), C("vector", VectorLoss, "x"),
                          C("detached", DetachedLoss, "x"), C("zero_grad", ZeroGradLoss, "x"),
                          C("inplace", InPlaceLoss, "x"), C("no_extra", NoExtraLoss, "x"),
                          C("unseeded", UnseededLoss, "x"), C("counting", CountingLoss, "x"),
                          C("plain_attribute", PlainAttributeLoss, "x"), C("matmul", MatmulLoss, "x"),
                          C("lenient", GoodLoss, "x"), C("unfreezing", UnfreezingLoss, "x"),
                          C("bad_stage", BadStageLoss, "x"), C("batch_std", BatchStdLoss, "x"),
                          C("needs_scale", needs_scale, "x"), C("no_summary", GoodLoss),
                          C("reserved_param", WhereLoss, "x")],
        "kdcore_connectors": [C("wrong_shape", WrongShapeConnector, "x"),
                              C("idle_param", IdleParamConnector, "x")],
        "kdcore_heads": [C("vector_term", VectorTermHead, "x")],
        "kdcore_distillers": [C("waking", WakingDistiller, "x")],
        "kdcore_algorithms": [C("detached_algo", DetachedAlgorithm, "x"),
                              C("teacher_training", TeacherTrainingAlgorithm, "x"),
                              C("two_halves", TwoHalves, "x"), C("forgetful_step", ForgetfulStep, "x"),
                              C("missing_parameter", MissingParameter, "x"),
                              C("unnamed_optimizer", UnnamedOptimizer, "x"),
                              C("unknown_optimizer", UnknownOptimizer, "x")],
        "kdcore_models": [C("fixed_classes", fixed_classes_model, "x"), C("idle_layer", IdleLayerModel, "x")],
        "kdcore_datasets": [C("good_data", good_data, "x"), C("unstable", unstable_data, "x"),
                            C("small_images", small_images_data, "x")],
    }
    for hook, specs in hooks.items():
        setattr(module, hook, kdcore.hookimpl(lambda specs=specs: specs))
    return module


FAKES = _module()
BAD_FACTORY = types.ModuleType("kit_bad_factory")
BAD_FACTORY.kdcore_losses = kdcore.hookimpl(
    lambda: [kdcore.Component("needs_scale", "kit_no_such_module:Loss", "x")])
_PLUGINS: dict[str, Plugins] = {}


def kit_plugins() -> Plugins:
    """Built-ins plus the fakes above: independent of whatever plugins are installed."""
    if "kit" not in _PLUGINS:
        _PLUGINS["kit"] = isolated_plugins(fakes=FAKES)
    return _PLUGINS["kit"]


class Isolated:
    def plugin_set(self) -> Plugins:
        return kit_plugins()


# --- the core's own components pass -------------------------------------------------------------

class TestGoodLoss(Isolated, testing.LossContract):
    component = "good"
    student_shape = (12,)
    more_shapes = [((4, 3, 3), (4, 3, 3))]
    tests_to_skip = {"squared error refuses nothing": ["test_unsupported_shapes_raise"]}


class TestLinearConnector(Isolated, testing.ConnectorContract):
    component = "linear"
    in_shape, out_shape = (8,), (16,)


class TestConv1x1Connector(Isolated, testing.ConnectorContract):
    component = "conv1x1_bn"
    in_shape, out_shape = (4, 7, 7), (6, 7, 7)
    bad_shapes = [((4, 7, 7), (6, 14, 14)), ((4,), (6,))]


class TestDistillHead(Isolated, testing.HeadContract):
    component = "distill"


class TestTeacherDistiller(Isolated, testing.DistillerContract):
    component = "teacher"


class TestTeacherStudent(Isolated, testing.AlgorithmContract):
    component = "teacher_student"
    params = {"student_loss_weight": 0.5}


class TestVanilla(Isolated, testing.AlgorithmContract):
    component = "vanilla"
    teachers = 0


class TestOwnStep(Isolated, testing.AlgorithmContract):
    """The kit steps an algorithm that owns its step as the engine does."""
    component = "two_halves"
    teachers = 0


class TestCnnStudent(Isolated, testing.ModelContract):
    component = "cnn_student"
    module_paths = ["stage1", "stage2.relu", "stage3.bn", "embedding", "fc"]


class TestGoodData(Isolated, testing.DatasetContract):
    component = "good_data"
    expected = {"input_shape": (1, 28, 28), "num_classes": 10, "train_size": 6, "name": "fake"}


# --- each check catches the defect it is about --------------------------------------------------

def judge(base: type, test: str, **attrs: Any) -> str:
    """Run one contract test on a component; return its failure message ('' if it passed)."""
    cls = type("Judged", (Isolated, base), attrs)
    instance = cls()
    method = getattr(instance, test)
    instance.setup_method(method)
    try:
        method()
    except AssertionError as exc:
        return str(exc)
    finally:
        instance.teardown_method(method)
    return ""


L, CONN, H, D, A, M, DS = (testing.LossContract, testing.ConnectorContract, testing.HeadContract,
                           testing.DistillerContract, testing.AlgorithmContract,
                           testing.ModelContract, testing.DatasetContract)
CASES = [
    (L, "test_returns_finite_scalar", {"component": "vector"}, "return a scalar tensor"),
    (L, "test_gradient_reaches_student", {"component": "detached"}, "does not depend on the student"),
    (L, "test_gradient_reaches_student", {"component": "zero_grad"}, "gradient is all zeros"),
    (L, "test_inputs_not_modified", {"component": "inplace"}, "modified the teacher feature in place"),
    (L, "test_accepts_extra_context", {"component": "no_extra"}, "must accept **extra"),
    (L, "test_deterministic_with_seed", {"component": "unseeded"}, "for the same seed"),
    (L, "test_repeated_call_same_value", {"component": "counting"}, "on the same batch"),
    (L, "test_state_dict_round_trip", {"component": "plain_attribute"}, "register state as parameters"),
    (L, "test_unsupported_shapes_raise", {"component": "matmul", "bad_shapes": [((4,), (5,))]},
     "raised RuntimeError"),
    (L, "test_unsupported_shapes_raise", {"component": "lenient", "bad_shapes": [((4,), (4,))]},
     "which bad_shapes says it does not support"),
    (L, "test_teacher_stays_frozen",
     {"component": "unfreezing", "context": {"teacher_module": freeze(nn.Linear(10, 10))}},
     "switched the frozen teacher_module to train mode"),
    (L, "test_stages_valid", {"component": "bad_stage"}, "needs_student=False with parameters=None"),
    (L, "test_batch_size_one", {"component": "batch_std"}, "on a batch of one sample"),
    (L, "test_declared_shapes", {"component": "good", "more_shapes": [((10,), (12,))]},
     "sets same_shape = False"),
    (L, "test_builds_with_defaults", {"component": "needs_scale", "params": {"scale": 1.0}},
     "does not build without parameters"),
    (L, "test_params_are_accepted", {"component": "good", "params": {"temprature": 2}},
     "params['temprature']"),
    (L, "test_component_is_registered", {"component": "no_summary"}, "one-line summary"),
    (L, "test_params_are_accepted", {"component": "reserved_param"},
     "the factory takes 'where', names kdcore.build keeps for itself"),
    (L, "test_factory_resolves", {"component": "needs_scale", "params": {"scale": 1.0},
                                  "plugin_set": lambda self: isolated_plugins(bad=BAD_FACTORY)},
     "does not resolve: ModuleNotFoundError"),
    (L, "test_component_is_registered", {"component": "kd_typo"}, "is not available"),
    (CONN, "test_output_shape", {"component": "wrong_shape"}, "expected shape (4, 16, 7, 7)"),
    (CONN, "test_gradient_flows", {"component": "idle_param"}, "none of its parameters gets a gradient"),
    (H, "test_returns_terms", {"component": "vector_term"}, "term 'per_sample'"),
    (D, "test_teachers_frozen", {"component": "waking"}, "is in train mode after distiller.train()"),
    (A, "test_step_changes_student", {"component": "detached_algo"}, "did not change the student"),
    (A, "test_step_changes_student", {"component": "teacher_training"}, "changed during a training step"),
    (A, "test_training_step_terms", {"component": "forgetful_step", "teachers": 0},
     "never called update() for optimizer(s) ['head']"),
    (A, "test_step_changes_student", {"component": "missing_parameter", "teachers": 0},
     "must hold every trainable parameter exactly once"),
    (A, "test_training_step_terms", {"component": "unknown_optimizer", "teachers": 0},
     "update(loss, 'generator'): the algorithm's optimizers() has no optimizer 'generator'"),
    (A, "test_training_step_terms", {"component": "unnamed_optimizer", "teachers": 0},
     "optimizers() must return None or {name: torch optimizer} with non-empty names"),
    (M, "test_num_classes_respected", {"component": "fixed_classes"}, "built with num_classes=7"),
    (M, "test_every_parameter_trains", {"component": "idle_layer"}, "aux.weight"),
    (M, "test_module_paths_exist", {"component": "cnn_student", "module_paths": ["stage9"]},
     "'stage9' does not exist"),
    (DS, "test_fingerprint_stable", {"component": "unstable"}, "give fingerprints"),
    (DS, "test_samples_have_input_shape", {"component": "small_images"}, "but input_shape says"),
    (DS, "test_declared_fields", {"component": "good_data", "expected": {"num_classes": 100}},
     "num_classes is 10, expected 100"),
]


@pytest.mark.parametrize("base, test, attrs, message", CASES,
                         ids=[f"{c[2]['component']}-{c[1][5:]}" for c in CASES])
def test_contract_catches(base: type, test: str, attrs: dict[str, Any], message: str) -> None:
    failure = judge(base, test, **attrs)
    assert message in failure, failure or "the check passed"


def test_catching_cases_pass_on_a_good_component() -> None:
    """The same checks pass on the well-behaved loss, so they fail for the defect alone."""
    for test in ("test_returns_finite_scalar", "test_gradient_reaches_student", "test_inputs_not_modified",
                 "test_accepts_extra_context", "test_deterministic_with_seed",
                 "test_repeated_call_same_value", "test_state_dict_round_trip", "test_batch_size_one"):
        assert judge(L, test, component="good") == "", test
    frozen = freeze(nn.Linear(10, 10))
    assert judge(L, "test_teacher_stays_frozen", component="good", context={"teacher_module": frozen}) == ""


# --- opting out ---------------------------------------------------------------------------------

def test_tests_to_skip_skips_with_the_reason() -> None:
    cls = type("Skips", (Isolated, testing.LossContract),
               {"component": "counting", "tests_to_skip": {"memory bank": ["test_repeated_call_same_value"]}})
    instance = cls()
    with pytest.raises((unittest.SkipTest, pytest.skip.Exception), match="memory bank"):
        instance.setup_method(instance.test_repeated_call_same_value)
    instance.setup_method(instance.test_returns_finite_scalar)  # other tests still run


def test_tests_to_skip_rejects_a_misspelled_test_name() -> None:
    cls = type("Typo", (Isolated, testing.LossContract),
               {"component": "good", "tests_to_skip": {"why": ["test_repeated_calls_same_value"]}})
    instance = cls()
    with pytest.raises(AssertionError, match="did you mean 'test_repeated_call_same_value'"):
        instance.setup_method(instance.test_returns_finite_scalar)


def test_kit_restores_torch_threads() -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        instance = TestGoodLoss()
        instance.setup_method(instance.test_returns_finite_scalar)
        assert torch.get_num_threads() == 1
        instance.teardown_method(instance.test_returns_finite_scalar)
        assert torch.get_num_threads() == 2
        with pytest.raises(pytest.skip.Exception):  # a skipped test changes nothing
            instance.setup_method(instance.test_unsupported_shapes_raise)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


# --- the plugin contract on installed (by hand) fixture distributions --------------------------

@pytest.fixture
def fixture_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for case in ("good", "misspelled", "incompatible"):
        install_dist_info(str(FIXTURES / case), str(tmp_path))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("KDCORE_PLUGINS", raising=False)
    yield tmp_path
    for name in [m for m in sys.modules if m.startswith("kdfix_")]:
        del sys.modules[name]


def plugin_judge(test: str, **attrs: Any) -> str:
    cls = type("JudgedPlugin", (testing.PluginContract,), attrs)
    instance = cls()
    method = getattr(instance, test)
    instance.setup_method(method)
    try:
        method()
    except AssertionError as exc:
        return str(exc)
    finally:
        instance.teardown_method(method)
    return ""


def test_plugin_contract_passes_a_good_plugin(fixture_site: Path) -> None:
    attrs = {"distribution": "kdcore-fixture-good", "entry_point": "fix_good",
             "components": {"loss": ["fix_l1", "twin"]}}
    tests = sorted(n for n in dir(testing.PluginContract) if n.startswith("test_"))
    assert len(tests) >= 10
    assert {t: plugin_judge(t, **attrs) for t in tests} == {t: "" for t in tests}


@pytest.mark.parametrize("test, attrs, message", [
    ("test_loads_cleanly", {"distribution": "kdcore-fixture-misspelled", "entry_point": "fix_typo"},
     "did you mean 'kdcore_losses'?"),
    ("test_declares_kdcore_range",
     {"distribution": "kdcore-fixture-incompatible", "entry_point": "fix_future"},
     "needs kdcore >=0.2,<0.3, but this is kdcore"),
    ("test_loads_cleanly", {"distribution": "kdcore-fixture-incompatible", "entry_point": "fix_future"},
     "is incompatible"),
    ("test_advertises_entry_point", {"distribution": "kdcore-fixture-good", "entry_point": "good"},
     "no 'kdcore' entry point named 'good' (it has: fix_good)"),
    ("test_distribution_installed", {"distribution": "kdcore-fixture-absent", "entry_point": "x"},
     "pip install -e ."),
    ("test_declared_components_present",
     {"distribution": "kdcore-fixture-good", "entry_point": "fix_good", "components": {"loss": ["fix_l2"]}},
     "does not provide loss 'fix_l2'"),
])
def test_plugin_contract_catches(fixture_site: Path, test: str, attrs: dict[str, Any], message: str) -> None:
    failure = plugin_judge(test, **attrs)
    assert message in failure, failure or "the check passed"


def test_plugin_contract_flags_commands_that_shadow_kdcore_or_are_not_click(fixture_site: Path) -> None:
    install_dist_info(str(FIXTURES / "commands"), str(fixture_site))
    plugin = {"distribution": "kdcore-fixture-commands", "entry_point": "fix_commands"}
    failure = plugin_judge("test_commands_are_click_commands_of_their_own_names", **plugin)
    assert "fix_commands:report: a command's factory must be a click.Command" in failure, failure
    source = fixture_site / "kdfix_commands" / "plugin.py"  # mend 'report'; 'run' is flagged next
    source.write_text(source.read_text().replace("def report", "@click.command()\ndef report"))
    sys.modules.pop("kdfix_commands.plugin", None)
    failure = plugin_judge("test_commands_are_click_commands_of_their_own_names", **plugin)
    assert "fix_commands:run: 'kdcore run' is kdcore's own command; rename it" in failure, failure


def test_install_dist_info_writes_what_importlib_metadata_reads(tmp_path: Path) -> None:
    from importlib.metadata import PathDistribution

    name = install_dist_info(str(FIXTURES / "incompatible"), str(tmp_path))
    dist = PathDistribution(tmp_path / "kdcore_fixture_incompatible-9.0.0.dist-info")
    assert name == dist.metadata["Name"] == "kdcore-fixture-incompatible" and dist.version == "9.0.0"
    assert dist.requires == ["kdcore>=0.2,<0.3", "torch>=2.1"]
    assert [(ep.group, ep.name, ep.value) for ep in dist.entry_points] == [
        ("kdcore", "fix_future", "kdfix_future.plugin")]
    assert (tmp_path / "kdfix_future" / "plugin.py").is_file()


def test_plugin_contract_flags_a_clash_with_another_installed_plugin(fixture_site: Path) -> None:
    """fix_other's loss 'twin' is also fix_good's, installed first: the short name stays with
    fix_good, so fix_other's own CI must fail (and fix_good's passes)."""
    install_dist_info(str(FIXTURES / "other"), str(fixture_site))
    other = {"distribution": "kdcore-fixture-other", "entry_point": "fix_other"}
    failure = plugin_judge("test_no_clash_with_other_plugins", **other)
    assert "reuses names that others provide: loss 'twin' (fix_good:twin)" in failure, failure
    good = {"distribution": "kdcore-fixture-good", "entry_point": "fix_good"}
    assert "(fix_other:twin)" in plugin_judge("test_no_clash_with_other_plugins", **good)


def test_plugin_contract_flags_a_missing_preset_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "kdfix_nopreset"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "plugin.py").write_text(
        "import kdcore\n\n@kdcore.hookimpl\ndef kdcore_presets():\n"
        "    return [kdcore.Preset('nopreset', 'kdfix_nopreset:presets/gone.yaml', 'x')]\n")
    info = tmp_path / "kdcore_fixture_nopreset-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: kdcore-fixture-nopreset\nVersion: 0.1.0\n"
                                   "Requires-Dist: kdcore<0.2,>=0.1\n")
    (info / "entry_points.txt").write_text("[kdcore]\nfix_nopreset = kdfix_nopreset.plugin\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("KDCORE_PLUGINS", raising=False)
    failure = plugin_judge("test_presets_exist", distribution="kdcore-fixture-nopreset",
                           entry_point="fix_nopreset")
    assert "nopreset:nopreset: preset file 'kdfix_nopreset:presets/gone.yaml' not found" in failure, failure
    assert "package-data" in failure
