"""Tests of the FitNets plugin: hint loss values, regressor shapes, hint stage, registration, CLI."""

from __future__ import annotations


import pytest
import torch
from torch import nn

import kdcore
from kdcore.testing import ConnectorContract, LossContract, PluginContract, run_preset
from kdcore_plugin_fitnet.connectors import ConvReg
from kdcore_plugin_fitnet.losses import FitNetLoss


def _loops_squared_errors(a: torch.Tensor, b: torch.Tensor) -> list[float]:
    """Per-sample sums of squared differences, by explicit loops over every element."""
    sums = []
    n, c, h, w = a.shape
    for i in range(n):
        total = 0.0
        for j in range(c):
            for y in range(h):
                for x in range(w):
                    total += (float(a[i, j, y, x]) - float(b[i, j, y, x])) ** 2
        sums.append(total)
    return sums


# --- hand-computed values ---------------------------------------------------------------

def test_hint_loss_hand_computed_tiny():
    # one sample, one channel, 1x2 map: diffs are 1 and -2 -> squares 1 and 4
    s = torch.tensor([[[[1.0, 0.0]]]])
    t = torch.tensor([[[[0.0, 2.0]]]])
    assert FitNetLoss()(s, t).item() == pytest.approx((1 + 4) / 2)
    assert FitNetLoss(reduction="half_sum")(s, t).item() == pytest.approx(0.5 * (1 + 4))


def test_hint_loss_matches_loops_on_random_tensors():
    torch.manual_seed(0)
    s, t = torch.randn(3, 2, 2, 3), torch.randn(3, 2, 2, 3)
    per_sample = _loops_squared_errors(s, t)
    numel = 3 * 2 * 2 * 3
    assert FitNetLoss(reduction="mean")(s, t).item() == pytest.approx(sum(per_sample) / numel, rel=1e-6)
    expected_half = sum(0.5 * v for v in per_sample) / 3
    assert FitNetLoss(reduction="half_sum")(s, t).item() == pytest.approx(expected_half, rel=1e-6)


def test_weighted_term_through_head_is_weight_times_loss():
    torch.manual_seed(1)
    s, t = torch.randn(2, 1, 2, 2), torch.randn(2, 1, 2, 2)
    head = kdcore.DistillationHead({"fitnet": (100.0, FitNetLoss())})
    expected = 100.0 * sum(_loops_squared_errors(s, t)) / s.numel()
    assert head(s, t)["fitnet"].item() == pytest.approx(expected, rel=1e-6)


# --- properties ---------------------------------------------------------------------------

@pytest.mark.parametrize("reduction", ["mean", "half_sum"])
def test_zero_when_student_equals_teacher(reduction):
    torch.manual_seed(2)
    x = torch.randn(4, 3, 5, 5)
    assert FitNetLoss(reduction=reduction)(x, x.clone()).item() == 0.0


def test_gradients_reach_student_and_regressor_not_teacher():
    torch.manual_seed(3)
    teacher = nn.Linear(4, 6 * 3 * 3)
    teacher.requires_grad_(False)
    before = teacher.weight.clone()
    with torch.no_grad():
        t = teacher(torch.randn(2, 4)).view(2, 6, 3, 3).relu()
    x = torch.randn(2, 4, 6, 6, requires_grad=True)
    reg = ConvReg(in_shape=(4, 6, 6), out_shape=(6, 3, 3))
    loss = FitNetLoss()(reg(x), t)
    loss.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in reg.parameters())
    assert teacher.weight.grad is None and teacher.bias.grad is None
    assert torch.equal(teacher.weight, before)
    assert not t.requires_grad


@pytest.mark.parametrize("fill", [0.0, 3.0])
def test_no_nan_for_zero_or_constant_features(fill):
    x = torch.full((2, 4, 6, 6), fill, requires_grad=True)
    t = torch.full((2, 6, 3, 3), fill)
    reg = ConvReg(in_shape=(4, 6, 6), out_shape=(6, 3, 3))
    loss = FitNetLoss()(reg(x), t)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in reg.parameters())


def test_batch_size_one():
    torch.manual_seed(4)
    x = torch.randn(1, 4, 6, 6, requires_grad=True)
    reg = ConvReg(in_shape=(4, 6, 6), out_shape=(6, 6, 6))
    loss = FitNetLoss()(reg(x), torch.rand(1, 6, 6, 6))
    loss.backward()
    assert torch.isfinite(loss) and loss.item() > 0
    assert torch.isfinite(x.grad).all()


# --- the regressor ------------------------------------------------------------------------

@pytest.mark.parametrize("in_shape,out_shape,kind", [
    ((8, 14, 14), (24, 7, 7), "down"),     # student twice the teacher: 3x3 stride 2
    ((8, 7, 7), (24, 14, 14), "up"),       # student half the teacher: 4x4 transposed stride 2
    ((16, 7, 7), (48, 7, 7), "valid"),     # equal: 1x1
    ((4, 9, 8), (6, 7, 7), "valid"),       # larger: kernel (3, 2)
    ((4, 2, 2), (6, 1, 1), "down"),
])
def test_conv_reg_maps_to_teacher_shape(in_shape, out_shape, kind):
    reg = ConvReg(in_shape=in_shape, out_shape=out_shape)
    assert reg.kind == kind
    assert tuple(reg(torch.randn(2, *in_shape)).shape[1:]) == out_shape


def test_conv_reg_valid_kernel_size():
    reg = ConvReg(in_shape=(4, 9, 8), out_shape=(6, 7, 7))
    assert reg.conv.kernel_size == (3, 2)


def test_conv_reg_relu_is_optional():
    torch.manual_seed(5)
    x = torch.randn(4, 3, 5, 5)
    with_relu = ConvReg(in_shape=(3, 5, 5), out_shape=(4, 5, 5))
    without = ConvReg(in_shape=(3, 5, 5), out_shape=(4, 5, 5), relu=False)
    assert (with_relu(x) >= 0).all()
    assert (without(x) < 0).any()


@pytest.mark.parametrize("in_shape,out_shape,needle", [
    ((8, 5, 5), (24, 7, 7), "(8, 5, 5)"),        # smaller but not half
    ((32,), (96,), "linear"),                     # flat features
])
def test_conv_reg_unsupported_shapes_are_user_errors(in_shape, out_shape, needle):
    with pytest.raises(kdcore.UserError) as err:
        kdcore.build("connector", "conv_reg", context={"in_shape": in_shape, "out_shape": out_shape})
    assert needle in str(err.value)


def test_loss_rejects_unequal_shapes_with_hint():
    with pytest.raises(kdcore.UserError, match="conv_reg") as err:
        FitNetLoss()(torch.randn(2, 16, 7, 7), torch.randn(2, 48, 7, 7))
    assert "(16, 7, 7)" in str(err.value) and "(48, 7, 7)" in str(err.value)


@pytest.mark.parametrize("params", [
    {"reduction": "sum"}, {"hint_epochs": -1}, {"hint_epochs": 1.5}, {"hint_lr": 0.0},
    {"hint_optimizer": "rmsprop"}, {"keep_hint": False},
])
def test_bad_params_are_user_errors(params):
    with pytest.raises(kdcore.UserError):
        kdcore.build("loss", "fitnet", **params)


# --- hint pre-training stage --------------------------------------------------------------

def test_no_stage_by_default():
    head = kdcore.DistillationHead({"fitnet": (100.0, FitNetLoss())},
                                   student_connector=ConvReg(in_shape=(3, 4, 4), out_shape=(5, 4, 4)))
    assert head.stages() == []


def test_hint_stage_trains_student_and_regressor_on_weighted_hint():
    torch.manual_seed(6)
    loss = FitNetLoss(hint_epochs=2, hint_lr=0.05)
    reg = ConvReg(in_shape=(3, 4, 4), out_shape=(5, 2, 2))
    head = kdcore.DistillationHead({"hint": (100.0, loss)}, student_connector=reg)
    stages = head.stages()
    assert len(stages) == 1
    stage = stages[0]
    assert (stage.name, stage.epochs, stage.lr, stage.optimizer) == ("fitnet_hint", 2, 0.05, "sgd")
    assert stage.parameters is None and stage.needs_student

    student = nn.Conv2d(1, 3, 3, padding=1)
    x = torch.randn(8, 1, 4, 4)
    t = torch.rand(8, 5, 2, 2)
    value = stage.loss(student(x), t, epoch=0, step=0)
    # independent: the weighted element-mean squared error of the connector output
    reg_out = reg(student(x)).detach()
    n, c, h, w = reg_out.shape
    expected = 100.0 * sum(_loops_squared_errors(reg_out, t)) / (n * c * h * w)
    assert value.item() == pytest.approx(expected, rel=1e-5)

    reg_before = [p.detach().clone() for p in reg.parameters()]
    params = list(student.parameters()) + list(reg.parameters())
    first = None
    for _ in range(10):  # plain gradient descent (torch.optim takes seconds to import)
        value = stage.loss(student(x), t)
        first = first if first is not None else value.item()
        grads = torch.autograd.grad(value, params)
        with torch.no_grad():
            for p, g in zip(params, grads):
                p -= 0.2 * stage.lr * g
    assert value.item() < 0.8 * first
    assert any(not torch.equal(a, b) for a, b in zip(reg_before, reg.parameters()))


def test_keep_hint_false_zeroes_main_term_but_keeps_stage():
    s, t = torch.randn(2, 3, 2, 2, requires_grad=True), torch.randn(2, 3, 2, 2)
    loss = FitNetLoss(hint_epochs=1, keep_hint=False)
    out = loss(s, t)
    assert out.item() == 0.0
    out.backward()  # still differentiable, so the engine's backward works
    head = kdcore.DistillationHead({"fitnet": (1.0, loss)})
    expected = sum(_loops_squared_errors(s.detach(), t)) / s.numel()
    assert head.stages()[0].loss(s, t).item() == pytest.approx(expected, rel=1e-6)


# --- registration -------------------------------------------------------------------------

def test_registered_under_plugin_ids():
    assert "fitnet:fitnet" in [r.id for r in kdcore.components("loss")]
    assert "fitnet:conv_reg" in [r.id for r in kdcore.components("connector")]
    assert isinstance(kdcore.build("loss", "fitnet"), FitNetLoss)
    assert isinstance(kdcore.build("loss", "fitnet:fitnet", reduction="half_sum"), FitNetLoss)
    reg = kdcore.build("connector", "conv_reg", context={"in_shape": (8, 14, 14), "out_shape": (24, 7, 7)},
                       relu=False)
    assert isinstance(reg, ConvReg) and isinstance(reg.relu, nn.Identity)


def test_unknown_param_is_user_error():
    with pytest.raises(kdcore.UserError, match="reduction"):
        kdcore.build("loss", "fitnet", reductoin="mean")


# --- the kdcore contract kit ----------------------------------------------------------------

class TestPluginContract(PluginContract):
    distribution = "kdcore-plugin-fitnet"
    entry_point = "fitnet"
    components = {"loss": ["fitnet"], "connector": ["conv_reg"]}


class TestFitNetLossContract(LossContract):
    component = "fitnet:fitnet"
    student_shape = teacher_shape = (6, 4, 4)
    bad_shapes = [((6, 4, 4), (8, 4, 4))]
    stage_params = {"hint_epochs": 1}


class TestConvRegDownContract(ConnectorContract):
    tests_to_skip = {"declares no pre-training stage": ["test_stages_valid"]}
    component = "fitnet:conv_reg"
    in_shape = (8, 14, 14)
    out_shape = (24, 7, 7)
    bad_shapes = [((8, 5, 5), (24, 7, 7)), ((32,), (96,))]


class TestConvRegUpContract(ConnectorContract):
    tests_to_skip = {"declares no pre-training stage": ["test_stages_valid"]}
    component = "fitnet:conv_reg"
    in_shape = (8, 7, 7)
    out_shape = (24, 14, 14)
    bad_shapes = [((8, 5, 5), (24, 7, 7))]


# --- end to end ---------------------------------------------------------------------------


@pytest.mark.e2e
def test_preset_runs_end_to_end(tmp_path):
    summary = run_preset("kdcore_plugin_fitnet", "fashion_mnist.yaml", tmp_path)
    assert summary["algo"] == "teacher_student" and summary["epochs"] == 1
    assert 0.0 <= summary["student"]["top1"] <= 100.0 and 0.0 <= summary["teacher"]["top1"] <= 100.0
    assert any(term.startswith("fitnet") for term in summary["last_train"]), summary["last_train"]
