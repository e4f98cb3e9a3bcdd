"""Tests of the OFD plugin: the BatchNorm margin, the partial L2, gradients, wiring, the preset."""

from __future__ import annotations

import importlib.resources
import importlib.util
import math

import pytest
import torch
import yaml
from torch import nn

import kdcore
from kdcore.testing import default_job_differences, run_preset
from kdcore.builtin.connectors import Conv1x1BN
from kdcore.models.cnn import cnn_student, cnn_teacher
from kdcore.taps import FeatureTaps, Tap, resolve_module
from kdcore_plugin_ofd.losses import OFDLoss, bn_margin

PRESET = importlib.resources.files("kdcore_plugin_ofd") / "presets" / "fashion_mnist.yaml"


def _margin_by_hand(gamma: float, beta: float) -> float:
    """E[x | x < 0] for x ~ N(beta, |gamma|^2), with math.erf; -3|gamma| in the far tail."""
    s, mu = abs(gamma), beta
    cdf_neg = 0.5 * (1.0 + math.erf((-mu / s) / math.sqrt(2.0)))
    if cdf_neg <= 0.001:
        return -3.0 * s
    pdf = math.exp(-0.5 * (mu / s) ** 2) / math.sqrt(2.0 * math.pi)
    return mu - s * pdf / cdf_neg


def _bn(gammas: list[float], betas: list[float]) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(len(gammas))
    with torch.no_grad():
        bn.weight.copy_(torch.tensor(gammas))
        bn.bias.copy_(torch.tensor(betas))
    return bn


# ---------------------------------------------------------------- the margin


def test_margin_of_a_standard_normal_is_minus_sqrt_2_over_pi():
    bn = nn.BatchNorm2d(1)  # gamma 1, beta 0
    assert bn_margin(bn).item() == pytest.approx(-math.sqrt(2.0 / math.pi), rel=1e-6)


def test_margin_matches_hand_computation():
    gammas = [1.0, 0.5, 2.0, -1.5, 1.0, 0.3]
    betas = [0.0, 0.4, -1.0, 0.2, 3.5, 5.0]  # the last two: Phi(-mu/s) <= 0.001 -> -3s
    expected = [_margin_by_hand(g, b) for g, b in zip(gammas, betas)]
    assert expected[-1] == pytest.approx(-0.9) and expected[-2] == pytest.approx(-3.0)
    got = bn_margin(_bn(gammas, betas)).tolist()
    assert got == pytest.approx(expected, rel=1e-5, abs=1e-7)
    assert all(m < 0 for m in got)


def test_margin_without_affine_parameters_and_with_zero_gamma():
    plain = nn.BatchNorm2d(2, affine=False)
    assert bn_margin(plain).tolist() == pytest.approx([-math.sqrt(2.0 / math.pi)] * 2, rel=1e-6)
    zero = bn_margin(_bn([0.0, 0.0, 0.0], [0.0, -0.5, 0.5]))
    assert torch.isfinite(zero).all()
    # a constant channel: its value if negative, about 0 otherwise
    assert zero.tolist() == pytest.approx([0.0, -0.5, 0.0], abs=1e-6)


def test_margin_is_a_buffer_computed_once():
    bn = _bn([1.0, 2.0], [0.0, 0.5])
    loss = OFDLoss(teacher_module=bn)
    first = loss.margin.clone()
    with torch.no_grad():
        bn.bias.fill_(10.0)
    assert torch.equal(loss.margin, first)
    assert "margin" in loss.state_dict()


# ---------------------------------------------------------------- loss values


def _ofd_by_hand(s: torch.Tensor, t: torch.Tensor, margins: list[float], div: float) -> float:
    n, c, h, w = s.shape
    total = 0.0
    for i in range(n):
        for k in range(c):
            for y in range(h):
                for x in range(w):
                    sv = float(s[i, k, y, x])
                    tv = max(float(t[i, k, y, x]), margins[k])
                    if sv > tv or tv > 0:
                        total += (sv - tv) ** 2
    return total / n / div


def test_ofd_matches_hand_computation():
    torch.manual_seed(0)
    bn = _bn([1.0, 0.5], [0.0, 0.3])
    margins = [_margin_by_hand(1.0, 0.0), _margin_by_hand(0.5, 0.3)]
    s = torch.randn(2, 2, 2, 3)
    t = torch.randn(2, 2, 2, 3) * 1.5
    for div in (1000.0, 1.0):
        got = OFDLoss(teacher_module=bn, div_factor=div)(s, t).item()
        assert got == pytest.approx(_ofd_by_hand(s, t, margins, div), rel=1e-5)


def test_ofd_cases_by_arithmetic():
    loss = OFDLoss(teacher_module=nn.BatchNorm2d(1), div_factor=1.0)  # margin -0.7979
    one = lambda v: torch.tensor([[[[v]]]])  # noqa: E731
    m = -math.sqrt(2.0 / math.pi)
    assert loss(one(0.5), one(2.0)).item() == pytest.approx(2.25)          # T > 0
    assert loss(one(0.5), one(-3.0)).item() == pytest.approx((0.5 - m) ** 2)  # S > T = m
    assert loss(one(-2.0), one(-3.0)).item() == 0.0                        # S <= T <= 0: skipped
    assert loss(one(-0.5), one(-0.6)).item() == pytest.approx(0.01)        # S > T = -0.6


def test_ofd_zero_when_student_equals_teacher():
    torch.manual_seed(0)
    bn = _bn([1.0, 0.2, 3.0], [0.0, -0.5, 1.0])
    t = torch.randn(4, 3, 3, 3) * 2
    loss = OFDLoss(teacher_module=bn)
    assert loss(t.clone(), t).item() == 0.0
    clipped = torch.maximum(t, loss.margin.view(1, -1, 1, 1))
    assert loss(clipped, t).item() == 0.0
    assert loss(t + 0.1, t).item() > 0.0


@pytest.mark.parametrize("value", [0.0, 1.0, -2.0])
def test_ofd_no_nan_for_constant_features(value):
    loss = OFDLoss(teacher_module=nn.BatchNorm2d(2))
    s = torch.full((1, 2, 3, 3), value, requires_grad=True)
    out = loss(s, torch.full((1, 2, 3, 3), value))
    out.backward()
    assert torch.isfinite(out) and torch.isfinite(s.grad).all()


def test_ofd_errors_name_the_fix():
    with pytest.raises(kdcore.UserError, match=r"stage2\.bn"):
        OFDLoss(teacher_module=nn.ReLU())
    with pytest.raises(kdcore.UserError, match="model output"):
        OFDLoss(teacher_module=None)
    loss = OFDLoss(teacher_module=nn.BatchNorm2d(3))
    with pytest.raises(kdcore.UserError, match="3 channels"):
        loss(torch.zeros(1, 4, 2, 2), torch.zeros(1, 4, 2, 2))
    with pytest.raises(ValueError):
        OFDLoss(teacher_module=nn.BatchNorm2d(3), div_factor=0)


# ---------------------------------------------------------------- gradients


@pytest.mark.parametrize("batch", [1, 4])
def test_gradients_reach_student_and_connector_not_teacher(batch):
    torch.manual_seed(0)
    student_net = nn.Conv2d(1, 2, 3, padding=1)
    teacher_conv, teacher_bn = nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3)
    teacher_bn.eval()
    connector = Conv1x1BN(in_shape=(2, 4, 4), out_shape=(3, 4, 4))
    head = kdcore.DistillationHead({"ofd": (1.0, OFDLoss(teacher_module=teacher_bn, div_factor=1.0))},
                                   student_connector=connector)
    teacher_params = [*teacher_conv.parameters(), *teacher_bn.parameters()]
    before = [p.detach().clone() for p in teacher_params]
    x = torch.randn(batch, 1, 4, 4, requires_grad=True)
    total = sum(head(student_net(x), teacher_bn(teacher_conv(x))).values())
    total.backward()
    torch.optim.SGD([*student_net.parameters(), *connector.parameters(), *teacher_params],
                    lr=0.1, weight_decay=0.1).step()
    assert torch.isfinite(total) and total.item() > 0
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert connector.conv.weight.grad is not None and connector.conv.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher_params)
    assert all(torch.equal(a, p) for a, p in zip(before, teacher_params))


# ---------------------------------------------------------------- registration and preset


def test_registered_through_kdcore():
    assert "ofd:ofd" in [r.id for r in kdcore.components("loss")]
    bn = _bn([2.0], [0.5])
    loss = kdcore.build("loss", "ofd:ofd", context={"teacher_module": bn, "student_module": None},
                        div_factor=10000)
    assert isinstance(loss, OFDLoss) and loss.div_factor == 10000
    assert loss.margin.item() == pytest.approx(_margin_by_hand(2.0, 0.5), rel=1e-5)
    with pytest.raises(kdcore.UserError, match="BatchNorm"):
        kdcore.build("loss", "ofd:ofd", context={"teacher_module": nn.ReLU()})


def _preset() -> dict:
    return yaml.safe_load(PRESET.read_text())


def test_preset_shares_the_default_job_blocks():
    assert default_job_differences(PRESET) == []


def test_preset_stage_weights_follow_the_paper():
    points = _preset()["teachers"][0]["distill"]
    assert [p["teacher_module"] for p in points] == ["stage1.bn", "stage2.bn", "stage3.bn"]
    assert [p["student_module"] for p in points] == ["stage1.bn", "stage2.bn", "stage3.bn"]
    n = len(points)
    assert [p["head"]["losses"][0]["weight"] for p in points] == [1 / 2 ** (n - i - 1) for i in range(n)]


def test_preset_heads_build_on_the_default_models():
    torch.manual_seed(0)
    points = _preset()["teachers"][0]["distill"]
    sample = torch.randn(4, 1, 28, 28)
    student, teacher = cnn_student(), cnn_teacher().eval()
    taps_s = [Tap(p["student_module"]) for p in points]
    taps_t = [Tap(p["teacher_module"]) for p in points]
    rec_s, rec_t = FeatureTaps(student, taps_s), FeatureTaps(teacher, taps_t)
    rec_s.record_output(student(sample))
    with torch.no_grad():
        rec_t.record_output(teacher(sample))
    for p, ts, tt in zip(points, taps_s, taps_t):
        s, t = rec_s[ts], rec_t[tt]
        cfg = p["head"]
        connector = kdcore.build("connector", cfg["student_connector"]["type"],
                                 context={"in_shape": tuple(s.shape[1:]), "out_shape": tuple(t.shape[1:])})
        (c,) = cfg["losses"]
        params = {k: v for k, v in c.items() if k not in ("type", "weight", "name")}
        context = {"teacher_module": resolve_module(teacher, p["teacher_module"])}
        loss = kdcore.build("loss", c["type"], context=context, **params)
        head = kdcore.DistillationHead({c["name"]: (c["weight"], loss)}, student_connector=connector)
        value = head(s, t)[c["name"]]
        assert torch.isfinite(value) and value.item() > 0
        assert head.stages() == []


# ---------------------------------------------------------------- end to end


@pytest.mark.e2e
def test_preset_runs_end_to_end(tmp_path):
    summary = run_preset("kdcore_plugin_ofd", "fashion_mnist.yaml", tmp_path)
    assert summary["algo"] == "teacher_student" and summary["epochs"] == 1
    assert 0.0 <= summary["student"]["top1"] <= 100.0 and 0.0 <= summary["teacher"]["top1"] <= 100.0
    assert any(term.startswith("ofd") for term in summary["last_train"]), summary["last_train"]
