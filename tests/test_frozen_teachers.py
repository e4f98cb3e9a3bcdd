"""Frozen-teacher rewrites (kdcore/engine/frozen.py): less work, the same outputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kdcore.components.distiller import freeze
from kdcore.engine.frozen import fold_batchnorm
from kdcore.models.cnn import cnn_teacher
from kdcore.taps import FeatureTaps, Tap


def trained_like_teacher(seed: int = 0) -> nn.Module:
    """A teacher whose BatchNorms hold non-trivial statistics and affine parameters."""
    torch.manual_seed(seed)
    model = cnn_teacher()
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(32, 1, 28, 28) * 2 + 0.5)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return freeze(model)


def test_folding_keeps_outputs_and_paths() -> None:
    model = trained_like_teacher()
    x = torch.randn(8, 1, 28, 28)
    with torch.no_grad():
        before = model(x)
        paths = [n for n, _ in model.named_modules()]
    assert fold_batchnorm(model) == ["stage1.bn", "stage2.bn", "stage3.bn"]
    assert [n for n, _ in model.named_modules()] == paths
    assert isinstance(model.stage2.bn, nn.Identity)
    assert model.stage2.conv.bias is not None and not model.stage2.conv.bias.requires_grad
    with torch.no_grad():
        after = model(x)
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)


def test_folded_value_is_the_batchnorm_formula() -> None:
    # one conv + BN pair, checked against gamma * (conv(x) - mean) / sqrt(var + eps) + beta
    conv, bn = nn.Conv2d(2, 3, 3, bias=True), nn.BatchNorm2d(3, eps=1e-3)
    with torch.no_grad():
        bn.running_mean.copy_(torch.tensor([0.5, -1.0, 2.0]))
        bn.running_var.copy_(torch.tensor([4.0, 0.25, 1.0]))
        bn.weight.copy_(torch.tensor([2.0, -1.0, 0.5]))
        bn.bias.copy_(torch.tensor([0.1, 0.2, -0.3]))
    pair = freeze(nn.Sequential(conv, bn))
    x = torch.randn(2, 2, 5, 5)
    with torch.no_grad():
        c = conv(x)
        expected = (torch.tensor([2.0, -1.0, 0.5]).view(1, 3, 1, 1)
                    * (c - torch.tensor([0.5, -1.0, 2.0]).view(1, 3, 1, 1))
                    / torch.sqrt(torch.tensor([4.0, 0.25, 1.0]) + 1e-3).view(1, 3, 1, 1)
                    + torch.tensor([0.1, 0.2, -0.3]).view(1, 3, 1, 1))
        assert fold_batchnorm(pair) == ["1"]
        torch.testing.assert_close(pair(x), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("tap", [Tap("stage2.conv"), Tap("stage2.bn"), Tap("stage2.bn", "input")])
def test_tapped_pairs_are_left_alone(tap: Tap) -> None:
    model = trained_like_teacher()
    x = torch.randn(4, 1, 28, 28)
    taps = FeatureTaps(model, [tap])
    with torch.no_grad():
        model(x)
    seen = taps.features[tap.key].clone()
    assert fold_batchnorm(model) == ["stage1.bn", "stage3.bn"]
    assert isinstance(model.stage2.bn, nn.BatchNorm2d)
    with torch.no_grad():
        model(x)
    torch.testing.assert_close(taps.features[tap.key], seen, rtol=1e-5, atol=1e-5)
    taps.remove()


def test_trainable_or_training_models_are_not_folded() -> None:
    trainable = cnn_teacher().eval()  # parameters still require gradients
    assert fold_batchnorm(trainable) == []
    assert isinstance(trainable.stage1.bn, nn.BatchNorm2d)
    training = freeze(cnn_teacher()).train()  # BN would use batch statistics
    assert fold_batchnorm(training) == []


def test_a_sequential_subclass_with_its_own_forward_is_left_alone() -> None:
    class Residual(nn.Sequential):
        def forward(self, x):  # reads the conv's output directly
            conv_out = self[0](x)
            return self[1](conv_out) + conv_out

    block = Residual(nn.Conv2d(2, 2, 3, padding=1), nn.BatchNorm2d(2))
    with torch.no_grad():
        block[1].running_mean.fill_(0.3)
    freeze(block)
    x = torch.randn(2, 2, 5, 5)
    with torch.no_grad():
        before = block(x)
    assert fold_batchnorm(block) == []
    with torch.no_grad():
        assert torch.equal(block(x), before)


def test_fold_teacher_batchnorm_still_stops_folding_for_one_release_with_a_warning() -> None:
    """An outside algorithm may still set ``fold_teacher_batchnorm = False`` (the API until
    0.1.8): the run honours it, and defining such a class says what replaces it."""
    import kdcore
    from kdcore.config import load_config
    from kdcore.engine.run import speed_up

    said = "OldStyle.fold_teacher_batchnorm is deprecated.*register the hooks"
    with pytest.warns(DeprecationWarning, match=said):
        class OldStyle(kdcore.Algorithm):
            fold_teacher_batchnorm = False

    teacher = trained_like_teacher()
    distiller = kdcore.Distiller({"t": teacher}, [])
    speed_up(OldStyle(cnn_teacher(), kdcore.ClassificationTask(10), distiller), load_config({}, []),
             torch.device("cpu"))
    assert sum(isinstance(m, nn.BatchNorm2d) for m in teacher.modules()) == 3  # none folded


def test_teachers_run_under_inference_mode_only_where_autograd_never_sees_their_outputs() -> None:
    """The training step's teacher pass gives plain tensors a loss may save for backward; scoring
    a frozen teacher runs under inference mode, a model that trains on afterwards under no_grad
    (kdcore-plugin-teacher-cache's fill: inference mode, tested there)."""
    import kdcore
    from kdcore.components.distiller import DistillPoint
    from kdcore.data import TensorSplit
    from kdcore.engine.evaluate import evaluate

    modes: list[tuple[bool, bool]] = []

    class Teacher(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            modes.append((torch.is_inference_mode_enabled(), torch.is_grad_enabled()))
            return self.fc(x)

    torch.manual_seed(0)
    head = kdcore.DistillationHead({"kd": (1.0, kdcore.build("loss", "kd"))})
    point = DistillPoint("p", "t", Tap("output"), Tap("output"), head)
    distiller = kdcore.Distiller({"t": Teacher()}, [point])
    data = TensorSplit(torch.randn(8, 4), torch.arange(8) % 3)

    # the training step's teacher pass: no autograd, but plain tensors that a loss may save
    student = torch.randn(8, 3, requires_grad=True)
    teacher = distiller.compute_teacher_features(data.inputs)["t"]["output"]
    assert modes.pop() == (False, False) and not teacher.is_inference() and not teacher.requires_grad
    torch.nn.functional.mse_loss(student, teacher).backward()  # MSE saves the teacher side
    assert student.grad is not None

    # scoring a frozen teacher: inference mode
    evaluate(distiller.teachers["t"], data, kdcore.ClassificationTask(3), batch_size=4,
             device=torch.device("cpu"), frozen=True)
    assert modes == [(True, False)] * 2
    modes.clear()
    evaluate(distiller.teachers["t"], data, kdcore.ClassificationTask(3), batch_size=4,
             device=torch.device("cpu"))
    assert modes == [(False, False)] * 2  # a model that trains on afterwards: no_grad only


def test_a_compiled_teacher_keeps_no_grad_so_it_is_not_compiled_twice() -> None:
    from kdcore.engine.evaluate import frozen_pass

    model = torch.nn.Linear(2, 2)
    with frozen_pass(model):
        assert torch.is_inference_mode_enabled()
    model.compile(backend="eager")  # compiles lazily: nothing is traced here
    with frozen_pass(model):
        assert not torch.is_inference_mode_enabled() and not torch.is_grad_enabled()
