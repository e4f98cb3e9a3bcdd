"""Tests of the Attention Transfer plugin: values, properties, shape errors, registration, CLI."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import kdcore
from kdcore.testing import LossContract, PluginContract, run_preset
from kdcore_plugin_at.losses import ATLoss


def _loops_attention(f: torch.Tensor, p: float) -> list[list[float]]:
    """Per sample: channel mean of |F|^p at each position (row-major), divided by its L2 norm."""
    n, c, h, w = f.shape
    maps = []
    for i in range(n):
        a = [sum(abs(float(f[i, j, y, x])) ** p for j in range(c)) / c
             for y in range(h) for x in range(w)]
        norm = math.sqrt(sum(v * v for v in a))
        maps.append([v / norm for v in a])
    return maps


def _loops_at_loss(s: torch.Tensor, t: torch.Tensor, p: float) -> float:
    a_s, a_t = _loops_attention(s, p), _loops_attention(t, p)
    squares = [(u - v) ** 2 for ms, mt in zip(a_s, a_t) for u, v in zip(ms, mt)]
    return sum(squares) / len(squares)


# --- hand-computed values ---------------------------------------------------------------

def test_hand_computed_tiny():
    # student: 2 channels on a 1x2 map; |F|^2 channel means are (1+1)/2 = 1 and (0+4)/2 = 2,
    # so at_s = (1, 2)/sqrt(5). teacher: 1 channel (3, 0) -> at_t = (1, 0).
    # loss = ((1/sqrt5 - 1)^2 + (2/sqrt5)^2) / 2 = 1 - 1/sqrt(5)
    s = torch.tensor([[[[1.0, 0.0]], [[1.0, 2.0]]]])
    t = torch.tensor([[[[3.0, 0.0]]]])
    assert ATLoss()(s, t).item() == pytest.approx(1 - 1 / math.sqrt(5), rel=1e-6)


@pytest.mark.parametrize("p", [1.0, 2.0, 3.0])
def test_matches_loops_on_random_tensors(p):
    torch.manual_seed(0)
    s, t = torch.randn(3, 2, 3, 2), torch.randn(3, 5, 3, 2)  # channels differ, spatial equal
    assert ATLoss(p=p)(s, t).item() == pytest.approx(_loops_at_loss(s, t, p), rel=1e-5)


def test_weighted_terms_through_head():
    torch.manual_seed(1)
    s, t = torch.randn(2, 3, 2, 2), torch.randn(2, 4, 2, 2)
    head = kdcore.DistillationHead({"at": (1000.0, ATLoss())})  # same_shape False: no shape check
    assert head(s, t)["at"].item() == pytest.approx(1000.0 * _loops_at_loss(s, t, 2.0), rel=1e-5)


# --- properties ---------------------------------------------------------------------------

def test_zero_when_student_equals_teacher():
    torch.manual_seed(2)
    x = torch.randn(4, 3, 5, 5)
    assert ATLoss()(x, x.clone()).item() == pytest.approx(0.0, abs=1e-12)


def test_zero_for_same_attention_with_other_channels_and_scale():
    # repeating channels keeps the channel mean; scaling is removed by the normalisation
    torch.manual_seed(3)
    x = torch.randn(2, 3, 4, 4)
    assert ATLoss()(x, 5.0 * x.repeat(1, 4, 1, 1)).item() == pytest.approx(0.0, abs=1e-10)


def test_gradients_reach_student_not_teacher():
    torch.manual_seed(4)
    teacher = nn.Linear(4, 6 * 3 * 3)
    teacher.requires_grad_(False)
    before = teacher.weight.clone()
    with torch.no_grad():
        t = teacher(torch.randn(2, 4)).view(2, 6, 3, 3)
    x = torch.randn(2, 1, 3, 3, requires_grad=True)
    student = nn.Conv2d(1, 2, 3, padding=1)
    loss = ATLoss()(student(x), t)
    loss.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert teacher.weight.grad is None and teacher.bias.grad is None
    assert torch.equal(teacher.weight, before)


@pytest.mark.parametrize("fill", [0.0, 2.0])
@pytest.mark.parametrize("p", [1.0, 2.0])
def test_no_nan_for_zero_or_constant_features(fill, p):
    s = torch.full((2, 3, 4, 4), fill, requires_grad=True)
    t = torch.full((2, 5, 4, 4), fill)
    loss = ATLoss(p=p)(s, t)
    loss.backward()
    assert torch.isfinite(loss) and loss.item() == pytest.approx(0.0, abs=1e-12)
    assert torch.isfinite(s.grad).all()
    # zero student against a non-zero teacher: the loss is finite, gradients too
    s2 = torch.zeros(2, 3, 4, 4, requires_grad=True)
    loss2 = ATLoss(p=p)(s2, torch.randn(2, 5, 4, 4))
    loss2.backward()
    assert torch.isfinite(loss2) and torch.isfinite(s2.grad).all()


def test_batch_size_one():
    torch.manual_seed(5)
    s = torch.randn(1, 2, 3, 3, requires_grad=True)
    t = torch.randn(1, 4, 3, 3)
    loss = ATLoss()(s, t)
    loss.backward()
    assert loss.item() == pytest.approx(_loops_at_loss(s.detach(), t, 2.0), rel=1e-5)
    assert torch.isfinite(s.grad).all()


# --- shapes -------------------------------------------------------------------------------

def test_spatial_mismatch_is_user_error_naming_both_shapes():
    with pytest.raises(kdcore.UserError, match="equal resolution") as err:
        ATLoss()(torch.randn(2, 8, 14, 14), torch.randn(2, 24, 7, 7))
    assert "(8, 14, 14)" in str(err.value) and "(24, 7, 7)" in str(err.value)


def test_spatial_mismatch_detected_at_build_from_context():
    with pytest.raises(kdcore.UserError, match="equal resolution") as err:
        kdcore.build("loss", "at", context={"student_shape": (8, 14, 14), "teacher_shape": (24, 7, 7)})
    assert "(8, 14, 14)" in str(err.value) and "(24, 7, 7)" in str(err.value)


def test_flat_features_are_user_error():
    with pytest.raises(kdcore.UserError, match="feature maps"):
        kdcore.build("loss", "at", context={"student_shape": (32,), "teacher_shape": (96,)})
    with pytest.raises(kdcore.UserError, match="feature maps"):
        ATLoss()(torch.randn(2, 32), torch.randn(2, 96))


def test_bad_p_is_user_error():
    with pytest.raises(kdcore.UserError, match="p must be"):
        kdcore.build("loss", "at", p=0.5)


# --- registration -------------------------------------------------------------------------

def test_registered_under_plugin_id():
    assert "at:at" in [r.id for r in kdcore.components("loss")]
    loss = kdcore.build("loss", "at", context={"student_shape": (8, 7, 7), "teacher_shape": (24, 7, 7)}, p=2)
    assert isinstance(loss, ATLoss) and loss.p == 2.0 and loss.same_shape is False
    assert isinstance(kdcore.build("loss", "at:at"), ATLoss)


def test_unknown_param_is_user_error():
    with pytest.raises(kdcore.UserError, match="'p'"):
        kdcore.build("loss", "at", pp=2)


# --- the kdcore contract kit ----------------------------------------------------------------

class TestPluginContract(PluginContract):
    distribution = "kdcore-plugin-at"
    entry_point = "at"
    components = {"loss": ["at"]}


class TestATLossContract(LossContract):
    tests_to_skip = {"declares no pre-training stage": ["test_stages_valid"]}
    component = "at:at"
    student_shape = (8, 7, 7)
    teacher_shape = (24, 7, 7)
    more_shapes = [((4, 14, 14), (4, 14, 14))]
    bad_shapes = [((8, 14, 14), (24, 7, 7)), ((32,), (96,))]


# --- end to end ---------------------------------------------------------------------------


@pytest.mark.e2e
def test_preset_runs_end_to_end(tmp_path):
    summary = run_preset("kdcore_plugin_at", "fashion_mnist.yaml", tmp_path)
    assert summary["algo"] == "teacher_student" and summary["epochs"] == 1
    assert 0.0 <= summary["student"]["top1"] <= 100.0 and 0.0 <= summary["teacher"]["top1"] <= 100.0
    assert any(term.startswith("at") for term in summary["last_train"]), summary["last_train"]
