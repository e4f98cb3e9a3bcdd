"""Tests of the DKD plugin: values, the KD decomposition, warm-up, properties, errors, CLI."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import kdcore
from kdcore.testing import LossContract, PluginContract, run_preset
from kdcore_plugin_dkd.losses import DKDLoss, decoupled_terms, warmup_factor


def _softmax(row: list[float], t: float) -> list[float]:
    m = max(row)
    e = [math.exp((v - m) / t) for v in row]
    return [v / sum(e) for v in e]


def _kl(p: list[float], q: list[float]) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, q) if a > 0)


def _loops_terms(s: list[float], t: list[float], gt: int, temp: float) -> tuple[float, float, float]:
    """(TCKD, NCKD, p_gt of the teacher) of one sample, from the definitions."""
    ps, pt = _softmax(s, temp), _softmax(t, temp)
    bs, bt = [ps[gt], 1 - ps[gt]], [pt[gt], 1 - pt[gt]]
    hs = [v / (1 - ps[gt]) for i, v in enumerate(ps) if i != gt]
    ht = [v / (1 - pt[gt]) for i, v in enumerate(pt) if i != gt]
    return _kl(bt, bs), _kl(ht, hs), pt[gt]


def _loops_dkd(s: torch.Tensor, t: torch.Tensor, y: torch.Tensor, alpha: float, beta: float,
               temp: float) -> float:
    rows = [_loops_terms(s[i].tolist(), t[i].tolist(), int(y[i]), temp) for i in range(len(y))]
    n = len(rows)
    return temp ** 2 * (alpha * sum(r[0] for r in rows) / n + beta * sum(r[1] for r in rows) / n)


# --- hand-computed values ---------------------------------------------------------------

def test_hand_computed_tiny():
    # one sample, 3 classes, T = 1, target 0; every probability written out
    s, t = [1.0, 2.0, 0.0], [2.0, 0.0, 1.0]
    zs = math.exp(1) + math.exp(2) + 1
    zt = math.exp(2) + 1 + math.exp(1)
    ps = [math.exp(1) / zs, math.exp(2) / zs, 1 / zs]
    pt = [math.exp(2) / zt, 1 / zt, math.exp(1) / zt]
    tckd = pt[0] * math.log(pt[0] / ps[0]) + (1 - pt[0]) * math.log((1 - pt[0]) / (1 - ps[0]))
    # non-target softmax over classes 1, 2: student (e^2, 1)/(e^2 + 1), teacher (1, e)/(1 + e)
    hs = [math.exp(2) / (math.exp(2) + 1), 1 / (math.exp(2) + 1)]
    ht = [1 / (1 + math.e), math.e / (1 + math.e)]
    nckd = ht[0] * math.log(ht[0] / hs[0]) + ht[1] * math.log(ht[1] / hs[1])
    loss = DKDLoss(alpha=0.5, beta=3.0, temperature=1.0, warmup_epochs=0)
    value = loss(torch.tensor([s]), torch.tensor([t]), targets=torch.tensor([0]), epoch=0)
    assert value.item() == pytest.approx(0.5 * tckd + 3.0 * nckd, rel=1e-5)


def test_matches_loops_on_random_logits():
    torch.manual_seed(0)
    s, t = 3 * torch.randn(4, 5), 3 * torch.randn(4, 5)
    y = torch.tensor([0, 4, 2, 2])
    loss = DKDLoss(alpha=1.0, beta=8.0, temperature=4.0, warmup_epochs=0)
    assert loss(s, t, targets=y).item() == pytest.approx(_loops_dkd(s, t, y, 1.0, 8.0, 4.0), rel=1e-5)


@pytest.mark.parametrize("temp", [1.0, 4.0])
def test_classical_kd_equals_tckd_plus_weighted_nckd(temp):
    # the paper's decomposition, per sample: KL(p^T || p^S) = TCKD + (1 - p_gt^T) * NCKD
    torch.manual_seed(1)
    s, t = 2 * torch.randn(6, 7, dtype=torch.float64), 2 * torch.randn(6, 7, dtype=torch.float64)
    y = torch.randint(0, 7, (6,))
    tckd, nckd = decoupled_terms(s, t, y, temp)
    for i in range(6):
        kd = _kl(_softmax(t[i].tolist(), temp), _softmax(s[i].tolist(), temp))
        p_gt = _softmax(t[i].tolist(), temp)[int(y[i])]
        assert kd == pytest.approx(float(tckd[i]) + (1 - p_gt) * float(nckd[i]), rel=1e-9)


def test_internal_terms_match_loops():
    torch.manual_seed(2)
    s, t = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    y = torch.tensor([3, 0, 1])
    tckd, nckd = decoupled_terms(s, t, y, 2.0)
    for i in range(3):
        want = _loops_terms(s[i].tolist(), t[i].tolist(), int(y[i]), 2.0)
        assert float(tckd[i]) == pytest.approx(want[0], rel=1e-9)
        assert float(nckd[i]) == pytest.approx(want[1], rel=1e-9)
    # float32 inputs agree to float32 accuracy (KL of nearby distributions cancels digits)
    tckd32, nckd32 = decoupled_terms(s.float(), t.float(), y, 2.0)
    assert torch.allclose(tckd32.double(), tckd, rtol=1e-3, atol=1e-6)
    assert torch.allclose(nckd32.double(), nckd, rtol=1e-3, atol=1e-6)


# --- warm-up --------------------------------------------------------------------------------

@pytest.mark.parametrize("epoch,warmup,factor", [
    (0, 20, 1 / 20), (9, 20, 10 / 20), (19, 20, 1.0), (50, 20, 1.0),
    (0, 2, 0.5), (1, 2, 1.0), (0, 1, 1.0), (0, 0, 1.0), (None, 20, 1.0),
])
def test_warmup_factor(epoch, warmup, factor):
    assert warmup_factor(epoch, warmup) == pytest.approx(factor)


def test_warmup_scales_the_loss():
    torch.manual_seed(3)
    s, t, y = torch.randn(4, 5), torch.randn(4, 5), torch.tensor([0, 1, 2, 3])
    full = DKDLoss(warmup_epochs=0)(s, t, targets=y).item()
    assert DKDLoss(warmup_epochs=20)(s, t, targets=y, epoch=4).item() == pytest.approx(full * 5 / 20, rel=1e-6)
    assert DKDLoss(warmup_epochs=20)(s, t, targets=y, epoch=30).item() == pytest.approx(full, rel=1e-6)


# --- properties ---------------------------------------------------------------------------

def test_zero_when_student_equals_teacher():
    torch.manual_seed(4)
    x = 5 * torch.randn(8, 10)
    y = torch.randint(0, 10, (8,))
    assert DKDLoss()(x, x.clone(), targets=y, epoch=100).item() == pytest.approx(0.0, abs=1e-6)


def test_gradients_reach_student_not_teacher():
    torch.manual_seed(5)
    teacher = nn.Linear(4, 5)
    teacher.requires_grad_(False)
    before = teacher.weight.clone()
    inputs = torch.randn(3, 4)
    with torch.no_grad():
        t = teacher(inputs)
    x = inputs.clone().requires_grad_(True)
    student = nn.Linear(4, 5)
    loss = DKDLoss(warmup_epochs=0)(student(x), t, targets=torch.tensor([0, 1, 2]))
    loss.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert teacher.weight.grad is None and teacher.bias.grad is None
    assert torch.equal(teacher.weight, before)


@pytest.mark.parametrize("student_fill", [0.0, 7.0])
def test_no_nan_for_constant_logits(student_fill):
    s = torch.full((2, 4), student_fill, requires_grad=True)
    t = torch.randn(2, 4)
    y = torch.tensor([1, 3])
    loss = DKDLoss(warmup_epochs=0)(s, t, targets=y)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()
    same = DKDLoss(warmup_epochs=0)(torch.zeros(2, 4), torch.zeros(2, 4), targets=y)
    assert same.item() == pytest.approx(0.0, abs=1e-7)


def test_no_nan_when_one_class_saturates():
    # p_gt = 1 in float32: log(1 - p_gt) would be -inf if computed from probabilities
    s = torch.tensor([[400.0, 0.0, 0.0], [0.0, -400.0, 0.0]], requires_grad=True)
    t = torch.tensor([[0.0, 1.0, 2.0], [300.0, 0.0, 0.0]])
    loss = DKDLoss(temperature=1.0, warmup_epochs=0)(s, t, targets=torch.tensor([0, 0]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()


def test_batch_size_one():
    torch.manual_seed(6)
    s = torch.randn(1, 5, requires_grad=True)
    t = torch.randn(1, 5)
    y = torch.tensor([2])
    loss = DKDLoss(warmup_epochs=0)(s, t, targets=y)
    loss.backward()
    assert loss.item() == pytest.approx(_loops_dkd(s.detach(), t, y, 1.0, 8.0, 4.0), rel=1e-5)
    assert torch.isfinite(s.grad).all()


def test_two_classes_has_zero_nckd():
    torch.manual_seed(7)
    s, t, y = torch.randn(3, 2), torch.randn(3, 2), torch.tensor([0, 1, 1])
    _, nckd = decoupled_terms(s, t, y, 4.0)
    assert torch.allclose(nckd, torch.zeros(3), atol=1e-7)


# --- errors -------------------------------------------------------------------------------

def test_missing_targets_is_user_error():
    with pytest.raises(kdcore.UserError, match="targets"):
        DKDLoss()(torch.randn(2, 3), torch.randn(2, 3), epoch=0)


@pytest.mark.parametrize("targets", [torch.tensor([0.0, 1.0]), torch.zeros(2, 3, dtype=torch.long),
                                     torch.tensor([0, 1, 2])])
def test_bad_targets_are_user_errors(targets):
    with pytest.raises(kdcore.UserError, match="integer class labels"):
        DKDLoss()(torch.randn(2, 3), torch.randn(2, 3), targets=targets)


def test_out_of_range_targets_are_user_errors():
    with pytest.raises(kdcore.UserError, match=r"\[0, 3\)"):
        DKDLoss()(torch.randn(2, 3), torch.randn(2, 3), targets=torch.tensor([0, 3]))


def test_feature_maps_are_user_errors():
    with pytest.raises(kdcore.UserError, match="output"):
        DKDLoss()(torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4), targets=torch.tensor([0, 1]))


@pytest.mark.parametrize("shape", [(8, 7, 7), (32,)])
def test_wrong_tap_detected_at_build(shape):
    with pytest.raises(kdcore.UserError, match="output") as err:
        kdcore.build("loss", "dkd", context={"student_shape": shape, "teacher_shape": shape,
                                             "num_classes": 10})
    assert str(shape[0]) in str(err.value)


@pytest.mark.parametrize("params", [{"temperature": 0}, {"alpha": -1}, {"beta": -0.1},
                                    {"warmup_epochs": -1}])
def test_bad_params_are_user_errors(params):
    with pytest.raises(kdcore.UserError):
        kdcore.build("loss", "dkd", **params)


# --- registration -------------------------------------------------------------------------

def test_registered_under_plugin_id():
    assert "dkd:dkd" in [r.id for r in kdcore.components("loss")]
    loss = kdcore.build("loss", "dkd", context={"student_shape": (10,), "num_classes": 10},
                        beta=2.0, warmup_epochs=1)
    assert isinstance(loss, DKDLoss)
    assert (loss.alpha, loss.beta, loss.temperature, loss.warmup_epochs) == (1.0, 2.0, 4.0, 1.0)
    assert isinstance(kdcore.build("loss", "dkd:dkd"), DKDLoss)


def test_unknown_param_is_user_error():
    with pytest.raises(kdcore.UserError, match="temperature"):
        kdcore.build("loss", "dkd", temprature=4.0)


# --- the kdcore contract kit ----------------------------------------------------------------

class TestPluginContract(PluginContract):
    distribution = "kdcore-plugin-dkd"
    entry_point = "dkd"
    components = {"loss": ["dkd"]}


class TestDKDLossContract(LossContract):
    tests_to_skip = {"declares no pre-training stage": ["test_stages_valid"]}
    component = "dkd:dkd"
    student_shape = (10,)
    bad_shapes = [((8, 7, 7), (8, 7, 7)), ((32,), (32,))]


# --- end to end ---------------------------------------------------------------------------


@pytest.mark.e2e
def test_preset_runs_end_to_end(tmp_path):
    summary = run_preset("kdcore_plugin_dkd", "fashion_mnist.yaml", tmp_path)
    assert summary["algo"] == "teacher_student" and summary["epochs"] == 1
    assert 0.0 <= summary["student"]["top1"] <= 100.0 and 0.0 <= summary["teacher"]["top1"] <= 100.0
    assert any(term.startswith("dkd") for term in summary["last_train"]), summary["last_train"]
