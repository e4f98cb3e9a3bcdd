"""CWD and pixel KD against hand-computed values, an independent float64 computation of the
formulas (value and gradient), and the properties the papers imply."""

from __future__ import annotations

import math

import pytest
import torch

import kdcore
from kdcore.builtin.connectors import Conv1x1BN
from kdcore.components import DistillationHead
from kdcore_plugin_cwd.losses import ChannelWiseDivergence, PixelKD


def cwd_reference(s: torch.Tensor, t: torch.Tensor, tau: float) -> torch.Tensor:
    """The paper's Eq. 3, channel by channel, in float64: sum_i p_t,i * log(p_t,i / p_s,i)."""
    n, c = s.shape[:2]
    total = torch.zeros((), dtype=torch.float64)
    for i in range(n):
        for k in range(c):
            ps = torch.exp(s[i, k].double().flatten() / tau)
            ps = ps / ps.sum()
            pt = torch.exp(t[i, k].double().flatten() / tau)
            pt = pt / pt.sum()
            total = total + (pt * torch.log(pt / ps)).sum()
    return total * tau ** 2 / (n * c)


def pixel_reference(s: torch.Tensor, t: torch.Tensor, temp: float) -> torch.Tensor:
    """KD at every pixel, in float64: KL over the classes, averaged over N*H*W pixels."""
    n, _, h, w = s.shape
    total = torch.zeros((), dtype=torch.float64)
    for i in range(n):
        for y in range(h):
            for x in range(w):
                ps = torch.softmax(s[i, :, y, x].double() / temp, 0)
                pt = torch.softmax(t[i, :, y, x].double() / temp, 0)
                total = total + (pt * torch.log(pt / ps)).sum()
    return total * temp ** 2 / (n * h * w)


def test_cwd_hand_computed() -> None:
    # one channel, two positions: teacher softmax (3/4, 1/4), student (1/2, 1/2)
    s = torch.zeros(1, 1, 1, 2)
    t = torch.tensor([math.log(3.0), 0.0]).view(1, 1, 1, 2)
    want = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert ChannelWiseDivergence(tau=1.0)(s, t).item() == pytest.approx(want, rel=1e-6)
    # tau = 2 on logits doubled gives the same distributions, times tau^2
    assert ChannelWiseDivergence(tau=2.0)(2 * s, 2 * t).item() == pytest.approx(4 * want, rel=1e-6)
    # a batch of two identical samples and two channels: the same mean (divided by N*C)
    s2, t2 = s.expand(2, 2, 1, 2).contiguous(), t.expand(2, 2, 1, 2).contiguous()
    assert ChannelWiseDivergence()(s2, t2).item() == pytest.approx(want, rel=1e-6)


def test_pixel_kd_hand_computed() -> None:
    # two pixels: one where student and teacher agree (KL 0), one with (3/4, 1/4) vs (1/2, 1/2)
    s = torch.zeros(1, 2, 1, 2)
    t = torch.zeros(1, 2, 1, 2)
    t[0, 0, 0, 1] = math.log(3.0)
    want = (0.75 * math.log(1.5) + 0.25 * math.log(0.5)) / 2
    assert PixelKD(temperature=1.0)(s, t).item() == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize("tau", [1.0, 4.0])
def test_cwd_value_and_gradient_match_the_formula(tau: float) -> None:
    g = torch.Generator().manual_seed(0)
    s = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64)
    loss = ChannelWiseDivergence(tau=tau)(s, t)
    assert loss.item() == pytest.approx(cwd_reference(s.detach(), t, tau).item(), rel=1e-10)
    (grad,) = torch.autograd.grad(loss, s)
    # d/ds of tau^2/(NC) KL(p_t || softmax(s/tau)) over a channel's positions: tau (q_s - p_t)/(NC)
    q = torch.softmax(s.detach().flatten(2) / tau, 2)
    p = torch.softmax(t.flatten(2) / tau, 2)
    assert torch.allclose(grad.flatten(2), tau * (q - p) / 6, atol=1e-12)


@pytest.mark.parametrize("temp", [1.0, 3.0])
def test_pixel_kd_value_and_gradient_match_the_formula(temp: float) -> None:
    g = torch.Generator().manual_seed(1)
    s = torch.randn(2, 4, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(2, 4, 3, 3, generator=g, dtype=torch.float64)
    loss = PixelKD(temperature=temp)(s, t)
    assert loss.item() == pytest.approx(pixel_reference(s.detach(), t, temp).item(), rel=1e-10)
    (grad,) = torch.autograd.grad(loss, s)
    q, p = torch.softmax(s.detach() / temp, 1), torch.softmax(t / temp, 1)
    assert torch.allclose(grad, temp * (q - p) / 18, atol=1e-12)


@pytest.mark.parametrize("loss", [ChannelWiseDivergence(tau=2.0), PixelKD(temperature=2.0)])
def test_zero_with_zero_gradient_when_student_equals_teacher(loss: kdcore.Loss) -> None:
    x = torch.randn(2, 3, 4, 4)
    s = x.clone().requires_grad_(True)
    value = loss(s, x)
    value.backward()
    assert abs(value.item()) < 1e-6 and s.grad.abs().max() < 1e-6
    # and a shift of a whole channel (CWD) or a whole pixel (pixel KD) changes no softmax
    shifted = x + 5.0
    assert abs(loss(shifted, x).item()) < 1e-5


def test_half_precision_teacher_is_upcast() -> None:
    g = torch.Generator().manual_seed(2)
    s, t = torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 3, 8, 8, generator=g)
    for loss in (ChannelWiseDivergence(tau=1.0), PixelKD()):
        full = loss(s, t)
        half = loss(s, t.half())
        assert half.dtype == torch.float32
        assert half.item() == pytest.approx(full.item(), rel=2e-3)


def test_gradients_reach_student_and_connector_only() -> None:
    torch.manual_seed(0)
    connector = Conv1x1BN((4, 8, 8), (6, 8, 8))
    head = DistillationHead({"cwd": (3.0, ChannelWiseDivergence(tau=1.0))}, student_connector=connector)
    s = torch.randn(2, 4, 8, 8, requires_grad=True)
    t = torch.randn(2, 6, 8, 8, requires_grad=True)  # requires_grad only to see that none arrives
    terms = head(s, t.detach())
    terms["cwd"].backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in connector.parameters())
    assert t.grad is None


def test_shape_mistakes_are_one_line_naming_the_fix() -> None:
    with pytest.raises(kdcore.UserError, match=r"student's is 32x32 and the teacher's 64x64; tap layers of the same resolution"):
        ChannelWiseDivergence(student_shape=(11, 32, 32), teacher_shape=(11, 64, 64))
    with pytest.raises(kdcore.UserError, match=r"pixel_kd .* 32x32 and the teacher's 64x64"):
        PixelKD()(torch.zeros(1, 11, 32, 32), torch.zeros(1, 11, 64, 64))
    with pytest.raises(kdcore.UserError, match=r"4 channels and the teacher 16; add head.student_connector: \{type: conv1x1_bn\}"):
        ChannelWiseDivergence(student_shape=(4, 8, 8), teacher_shape=(16, 8, 8))
    with pytest.raises(kdcore.UserError, match=r"maps \(C, H, W\).*\(10,\)"):
        PixelKD(student_shape=(10,), teacher_shape=(10,))
    with pytest.raises(kdcore.UserError, match="temperature must be > 0"):
        ChannelWiseDivergence(tau=0)
