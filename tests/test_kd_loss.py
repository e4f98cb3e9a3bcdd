"""Hinton KD against hand-computed values and the properties its formula implies."""

from __future__ import annotations

import math

import pytest
import torch

import kdcore
from kdcore import testing
from kdcore.builtin.losses import KDLoss


def softmax(row: list[float], t: float) -> list[float]:
    exps = [math.exp(v / t) for v in row]
    return [e / sum(exps) for e in exps]


def by_hand(student: list[list[float]], teacher: list[list[float]], t: float) -> float:
    """T^2 * mean over rows of sum_i p_t,i * log(p_t,i / p_s,i), written out explicitly."""
    total = 0.0
    for s_row, t_row in zip(student, teacher):
        ps, pt = softmax(s_row, t), softmax(t_row, t)
        total += sum(q * math.log(q / p) for p, q in zip(ps, pt))
    return t * t * total / len(student)


@pytest.mark.parametrize("t", [1.0, 2.0, 4.0])
def test_matches_hand_computation(t: float) -> None:
    student = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]
    teacher = [[2.0, 0.0, 1.0], [1.0, 1.0, 1.0]]
    got = KDLoss(temperature=t)(torch.tensor(student), torch.tensor(teacher))
    assert float(got) == pytest.approx(by_hand(student, teacher, t), rel=1e-5)


def test_known_value_one_row() -> None:
    # student uniform over 2 classes, teacher (0.8, 0.2) exactly at T=1:
    # KL = 0.8 ln(0.8/0.5) + 0.2 ln(0.2/0.5) = 0.19274...
    teacher = torch.tensor([[math.log(0.8), math.log(0.2)]])
    got = KDLoss(temperature=1.0)(torch.zeros(1, 2), teacher)
    assert float(got) == pytest.approx(0.8 * math.log(1.6) + 0.2 * math.log(0.4), abs=1e-6)


def test_zero_when_student_equals_teacher_and_positive_otherwise() -> None:
    logits = torch.randn(8, 10)
    assert float(KDLoss()(logits, logits.clone())) == pytest.approx(0.0, abs=1e-6)
    assert float(KDLoss()(torch.randn(8, 10), logits)) > 0


def test_invariant_to_adding_a_constant_to_logits() -> None:
    s, t = torch.randn(4, 5), torch.randn(4, 5)
    assert float(KDLoss()(s + 3.0, t - 2.0)) == pytest.approx(float(KDLoss()(s, t)), rel=1e-5)


def test_gradients_reach_student_only_and_teacher_is_untouched() -> None:
    torch.manual_seed(0)
    teacher_net = torch.nn.Linear(6, 4)
    for p in teacher_net.parameters():
        p.requires_grad_(False)
    before = [p.clone() for p in teacher_net.parameters()]
    student_net = torch.nn.Linear(6, 4)
    x = torch.randn(5, 6)
    with torch.no_grad():
        teacher_logits = teacher_net(x)
    loss = KDLoss(temperature=4.0)(student_net(x), teacher_logits)
    loss.backward()
    assert student_net.weight.grad is not None and student_net.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher_net.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, teacher_net.parameters()))


def test_no_nan_for_extreme_or_constant_logits_and_batch_of_one() -> None:
    big = torch.tensor([[1e4, -1e4, 0.0]])
    assert torch.isfinite(KDLoss(temperature=1.0)(big, -big))
    assert torch.isfinite(KDLoss()(torch.zeros(1, 3), torch.zeros(1, 3)))


def test_rejects_non_positive_temperature_and_is_registered() -> None:
    with pytest.raises(ValueError):
        KDLoss(temperature=0)
    loss = kdcore.build("loss", "kd", temperature=2.0)
    assert isinstance(loss, KDLoss) and loss.temperature == 2.0
    assert "kdcore:kd" in {r.id for r in kdcore.components("loss")}


def test_plugin_kd_preset_is_the_default_job() -> None:
    """kdcore-plugin-kd keeps Hinton KD's preset: the default job, by name."""
    import yaml

    from kdcore.registry import lookup

    preset = lookup("preset", "kd")
    default = lookup("preset", "teacher_student")
    read = [yaml.safe_load(open(p.component.resolve(), encoding="utf-8")) for p in (preset, default)]
    assert preset.plugin == "kd" and read[0] == read[1]


class TestKDContract(testing.LossContract):
    component = "kdcore:kd"
    params = {"temperature": 4.0}
    student_shape = (10,)  # logits
    more_shapes = [((100,), (100,))]
