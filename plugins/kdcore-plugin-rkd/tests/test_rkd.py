"""Tests of the RKD losses: hand-computed values, invariances, gradients, degenerate batches,
registration, and one end-to-end CLI run."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch
from torch import nn

import kdcore
from kdcore.testing import run_preset
from kdcore_plugin_rkd.losses import RKDAngleLoss, RKDDistanceLoss, RKDLoss

PRESET = Path(__file__).resolve().parents[1] / "kdcore_plugin_rkd" / "presets" / "fashion_mnist.yaml"


# --- independent reference: plain Python loops over lists, no torch --------------------------

def _huber(x: float) -> float:
    return 0.5 * x * x if abs(x) < 1.0 else abs(x) - 0.5


def _dist(a: list[float], b: list[float]) -> float:
    return math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b)))


def _loop_distance_potential(rows: list[list[float]]) -> list[list[float]]:
    n = len(rows)
    d = [[_dist(rows[i], rows[j]) for j in range(n)] for i in range(n)]
    nonzero = [v for row in d for v in row if v > 0]
    mean = sum(nonzero) / len(nonzero) if nonzero else 0.0
    return [[(v / mean if mean > 0 else 0.0) for v in row] for row in d]


def _loop_angle_potential(rows: list[list[float]]) -> list[float]:
    n = len(rows)
    out = []
    for j, i, k in itertools.product(range(n), repeat=3):
        a = [x - y for x, y in zip(rows[i], rows[j])]
        b = [x - y for x, y in zip(rows[k], rows[j])]
        na, nb = math.sqrt(sum(x * x for x in a)), math.sqrt(sum(x * x for x in b))
        out.append(sum(x * y for x, y in zip(a, b)) / (na * nb) if na > 0 and nb > 0 else 0.0)
    return out


def _loop_distance_loss(s: list[list[float]], t: list[list[float]]) -> float:
    ps, pt = _loop_distance_potential(s), _loop_distance_potential(t)
    terms = [_huber(a - b) for ra, rb in zip(ps, pt) for a, b in zip(ra, rb)]
    return sum(terms) / len(terms)


def _loop_angle_loss(s: list[list[float]], t: list[list[float]]) -> float:
    terms = [_huber(a - b) for a, b in zip(_loop_angle_potential(s), _loop_angle_potential(t))]
    return sum(terms) / len(terms)


# --- hand-computed values --------------------------------------------------------------------

def test_distance_loss_matches_hand_arithmetic():
    # Student: a 3-4-5 right triangle, mean distance (3+4+5)/3 = 4, so off-diagonal potentials
    # are 3/4, 1, 5/4. Teacher: sides 2, 2, sqrt(8), mean (4+sqrt 8)/3.
    student = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]])
    teacher = torch.tensor([[1.0, 0.0, 0.0], [1.0, 2.0, 0.0], [1.0, 0.0, 2.0]])
    mt = (4 + math.sqrt(8)) / 3
    diffs = [0.75 - 2 / mt, 1.0 - 2 / mt, 1.25 - math.sqrt(8) / mt]  # pairs (0,1) (0,2) (1,2)
    expected = 2 * sum(0.5 * d * d for d in diffs) / 9  # each pair twice, 9 entries, |d| < 1
    got = RKDDistanceLoss()(student, teacher)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_angle_loss_matches_hand_arithmetic():
    # Student: right angle at sample 0 of a 3-4-5 triangle; teacher: an equilateral triangle.
    student = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]])
    teacher = torch.tensor([[0.0, 0.0], [2.0, 0.0], [1.0, math.sqrt(3.0)]])
    # Student cosines of the three interior angles: at 0: 0, at 1: 3/5, at 2: 4/5. Teacher: 1/2.
    # Each interior angle appears twice ((i,k) and (k,i)) and each i==k (non-degenerate)
    # entry is cos 0 = 1 on both sides; the rest (a zero-length difference) are 0 on both.
    diffs = [0.0 - 0.5, 0.6 - 0.5, 0.8 - 0.5]
    expected = 2 * sum(0.5 * d * d for d in diffs) / 27
    got = RKDAngleLoss()(student, teacher)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_random_batches_match_loop_reference_in_both_huber_branches():
    torch.manual_seed(0)
    student = torch.randn(5, 4)
    student[4] = 12.0  # an outlier pushes some distance differences past the Huber knee
    teacher = torch.randn(5, 7)
    s, t = student.tolist(), teacher.tolist()
    ps, pt = _loop_distance_potential(s), _loop_distance_potential(t)
    assert any(abs(a - b) > 1 for ra, rb in zip(ps, pt) for a, b in zip(ra, rb))
    assert RKDDistanceLoss()(student, teacher).item() == pytest.approx(_loop_distance_loss(s, t), rel=1e-5)
    assert RKDAngleLoss()(student, teacher).item() == pytest.approx(_loop_angle_loss(s, t), rel=1e-5)
    combined = 25 * _loop_distance_loss(s, t) + 50 * _loop_angle_loss(s, t)
    assert RKDLoss()(student, teacher).item() == pytest.approx(combined, rel=1e-5)
    assert RKDLoss(distance_weight=2, angle_weight=0)(student, teacher).item() == pytest.approx(
        2 * _loop_distance_loss(s, t), rel=1e-5)


def test_feature_maps_are_flattened():
    torch.manual_seed(1)
    student, teacher = torch.randn(4, 2, 3, 3), torch.randn(4, 5, 2, 2)
    s, t = student.flatten(1).tolist(), teacher.flatten(1).tolist()
    expected = 25 * _loop_distance_loss(s, t) + 50 * _loop_angle_loss(s, t)
    assert RKDLoss()(student, teacher).item() == pytest.approx(expected, rel=1e-5)


# --- properties ------------------------------------------------------------------------------

def test_zero_when_student_equals_teacher_up_to_scale_and_isometry():
    torch.manual_seed(2)
    student = torch.randn(16, 32)
    assert RKDLoss()(student, 3.7 * student).item() == pytest.approx(0.0, abs=1e-5)
    # A 96-d teacher holding the student's geometry: zero-pad, rotate, rescale.
    q, _ = torch.linalg.qr(torch.randn(96, 96, dtype=torch.float64))
    teacher = (torch.cat([student, torch.zeros(16, 64)], 1).double() @ q * 0.2).float()
    assert RKDLoss()(student, teacher).item() == pytest.approx(0.0, abs=1e-4)
    assert RKDLoss()(student, torch.randn(16, 96)).item() > 0.1


def test_gradients_reach_student_not_teacher():
    torch.manual_seed(3)
    x = torch.randn(8, 10, requires_grad=True)
    student_net, teacher_net = nn.Linear(10, 32), nn.Linear(10, 96)
    for p in teacher_net.parameters():
        p.requires_grad_(False)
    before = [p.clone() for p in teacher_net.parameters()]
    with torch.no_grad():
        teacher = teacher_net(x)
    leaf_teacher = teacher.clone().requires_grad_(True)  # even a grad-tracking teacher tensor
    loss = RKDLoss()(student_net(x), leaf_teacher)
    loss.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0 and torch.isfinite(x.grad).all()
    assert student_net.weight.grad.abs().sum() > 0
    assert leaf_teacher.grad is None
    for p, b in zip(teacher_net.parameters(), before):
        assert p.grad is None and torch.equal(p, b)


@pytest.mark.parametrize("make", [
    lambda: torch.zeros(6, 8),
    lambda: torch.full((6, 8), 3.0),
    lambda: torch.tensor([[1.0, 2.0]] * 3 + [[0.0, 1.0]] * 3),  # identical samples in the batch
])
def test_no_nan_for_degenerate_features(make):
    torch.manual_seed(4)
    for student_is_degenerate in (True, False):
        s = (make() if student_is_degenerate else torch.randn(6, 8)).requires_grad_(True)
        t = torch.randn(6, 5) if student_is_degenerate else make()
        loss = RKDLoss()(s, t)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(s.grad).all()
    both = make().requires_grad_(True)
    loss = RKDLoss()(both, make())
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-6) and torch.isfinite(both.grad).all()


def test_duplicates_in_a_large_offset_batch_have_distance_exactly_zero():
    # A Gram-matrix distance would give duplicates a round-off distance of ~0.1 here (40 rows,
    # features around 50), count it in the mean, and break the zero-loss property.
    torch.manual_seed(7)
    x = torch.randn(20, 8) * 10 + 50
    e = torch.cat([x, x])
    from kdcore_plugin_rkd.losses import distance_potential

    expected = _loop_distance_potential(e.double().tolist())
    got = distance_potential(e)
    assert got[0, 20].item() == 0.0
    assert got.tolist() == [pytest.approx(row, abs=1e-5) for row in expected]


def test_constant_student_against_spread_teacher_is_positive():
    # All-zero student potential vs. teacher potential with off-diagonal mean 1.
    teacher = torch.tensor([[0.0], [1.0], [3.0]])
    pt = _loop_distance_potential(teacher.tolist())
    expected = sum(_huber(0.0 - v) for row in pt for v in row) / 9
    assert RKDDistanceLoss()(torch.zeros(3, 4), teacher).item() == pytest.approx(expected, rel=1e-5)


def test_small_batches():
    # 1 sample: no pair, no triplet -> 0, and backward still works.
    s = torch.randn(1, 4, requires_grad=True)
    loss = RKDLoss()(s, torch.randn(1, 9))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(s.grad, torch.zeros(1, 4))
    # 2 samples: one distance, normalised to 1 on both sides -> 0; angles need 3 samples -> 0.
    s2 = torch.randn(2, 4, requires_grad=True)
    assert RKDDistanceLoss()(s2, torch.randn(2, 9)).item() == pytest.approx(0.0, abs=1e-6)
    assert RKDAngleLoss()(s2, torch.randn(2, 9)).item() == 0.0
    # 3 samples: the smallest batch with an angle.
    torch.manual_seed(5)
    s3, t3 = torch.randn(3, 4), torch.randn(3, 9)
    assert RKDAngleLoss()(s3, t3).item() == pytest.approx(_loop_angle_loss(s3.tolist(), t3.tolist()), rel=1e-5)


def test_bad_arguments():
    with pytest.raises(ValueError, match="same batch"):
        RKDLoss()(torch.randn(4, 3), torch.randn(5, 3))
    with pytest.raises(ValueError):
        RKDLoss(distance_weight=-1)
    with pytest.raises(ValueError):
        RKDLoss(distance_weight=0, angle_weight=0)


# --- registration ----------------------------------------------------------------------------

def test_registered_through_entry_point():
    ids = {r.id for r in kdcore.components("loss")}
    assert {"rkd:rkd", "rkd:rkd_distance", "rkd:rkd_angle"} <= ids
    context = {"student_shape": (32,), "teacher_shape": (96,), "num_samples": 100, "num_classes": 10}
    loss = kdcore.build("loss", "rkd", context=context)
    assert isinstance(loss, RKDLoss) and (loss.distance_weight, loss.angle_weight) == (25.0, 50.0)
    assert kdcore.build("loss", "rkd:rkd", context=context, angle_weight=2).angle_weight == 2.0
    assert isinstance(kdcore.build("loss", "rkd_distance", context=context), RKDDistanceLoss)
    assert isinstance(kdcore.build("loss", "rkd_angle", context=context), RKDAngleLoss)
    with pytest.raises(kdcore.UserError, match="distance_weight"):
        kdcore.build("loss", "rkd", context=context, distance_wieght=1)


def test_head_accepts_different_widths():
    head = kdcore.DistillationHead({"rkd": (2.0, RKDLoss())})
    torch.manual_seed(6)
    s, t = torch.randn(8, 32), torch.randn(8, 96)
    terms = head(s, t, targets=torch.zeros(8, dtype=torch.long), indices=torch.arange(8), epoch=0, step=0)
    assert terms["rkd"].item() == pytest.approx(2.0 * RKDLoss()(s, t).item(), rel=1e-6)


# --- end to end ------------------------------------------------------------------------------


@pytest.mark.e2e
def test_preset_runs_end_to_end(tmp_path):
    summary = run_preset("kdcore_plugin_rkd", "fashion_mnist.yaml", tmp_path)
    assert summary["algo"] == "teacher_student" and summary["epochs"] == 1
    assert 0.0 <= summary["student"]["top1"] <= 100.0 and 0.0 <= summary["teacher"]["top1"] <= 100.0
    assert any(term.startswith("rkd") for term in summary["last_train"]), summary["last_train"]
