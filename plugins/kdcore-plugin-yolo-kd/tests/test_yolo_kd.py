"""Tests of the yolo_kd plugin: FM-NMS on hand-built grids, the loss against a loop computation
(value and gradient), properties, shape errors, registration, the preset end to end."""

from __future__ import annotations

import math

import pytest
import torch

import kdcore
from kdcore.testing import run_preset
from kdcore_plugin_yolo_kd.losses import YOLOKDLoss, fm_nms


def _sig(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


def _softmax(values: list[float]) -> list[float]:
    top = max(values)
    e = [math.exp(v - top) for v in values]
    return [v / sum(e) for v in e]


def _loops_fm_nms(obj: torch.Tensor, cls: torch.Tensor, size: int) -> list:
    """keep[n][a][y][x] by brute force: no prediction of the same class with a higher score
    within ``size // 2`` cells in both directions, over every anchor."""
    n_, a_, h_, w_ = obj.shape
    r = size // 2
    keep = torch.zeros(obj.shape, dtype=torch.bool)
    for n in range(n_):
        for a in range(a_):
            for y in range(h_):
                for x in range(w_):
                    mine = float(obj[n, a, y, x])
                    beaten = any(float(obj[n, b, v, u]) > mine
                                 for b in range(a_) for v in range(max(0, y - r), min(h_, y + r + 1))
                                 for u in range(max(0, x - r), min(w_, x + r + 1))
                                 if int(cls[n, b, v, u]) == int(cls[n, a, y, x]))
                    keep[n, a, y, x] = not beaten
    return keep


def _loops_loss(s: torch.Tensor, t: torch.Tensor, use_nms: bool, weights=(1.0, 1.0, 1.0)) -> float:
    """The formula of docs/methods/yolo_kd.md, one prediction at a time."""
    n_, a_, ch, h_, w_ = s.shape
    c = ch - 5
    classes = t[:, :, 5:].argmax(2)
    keep = _loops_fm_nms(t[:, :, 4], classes, 3) if use_nms else torch.ones(n_, a_, h_, w_, dtype=torch.bool)
    total = 0.0
    for n in range(n_):
        for a in range(a_):
            for y in range(h_):
                for x in range(w_):
                    tv = [float(v) for v in t[n, a, :, y, x]]
                    sv = [float(v) for v in s[n, a, :, y, x]]
                    o = _sig(tv[4]) if keep[n, a, y, x] else 0.0
                    q = _sig(sv[4])
                    obj = (o * math.log(o / q) if o > 0 else 0.0) + \
                          ((1 - o) * math.log((1 - o) / (1 - q)) if o < 1 else 0.0)
                    p, ps = _softmax(tv[5:]), _softmax(sv[5:])
                    kl = sum(pi * math.log(pi / qi) for pi, qi in zip(p, ps) if pi > 0)
                    box = (_sig(sv[0]) - _sig(tv[0])) ** 2 + (_sig(sv[1]) - _sig(tv[1])) ** 2 + \
                          (sv[2] - tv[2]) ** 2 + (sv[3] - tv[3]) ** 2
                    total += weights[0] * obj + weights[1] * o * kl + weights[2] * o * box
    assert c >= 1
    return total / n_


# --- FM-NMS -----------------------------------------------------------------------------

def _grid_with_clusters() -> tuple[torch.Tensor, torch.Tensor, list]:
    """A 1-image, 2-anchor, 9x9 grid: low background objectness everywhere (class 0 spread in
    a chessboard of classes 1/2 so no 3x3 window of one class is empty of other predictions),
    and three clusters, each a 3x3 block of one class with one clear maximum."""
    obj = torch.full((1, 2, 9, 9), -6.0)
    cls = torch.zeros(1, 2, 9, 9, dtype=torch.long)
    cls[0, 0] = 1  # anchor 0: class 1 background, anchor 1: class 2 background
    cls[0, 1] = 2
    obj[0, 0] += torch.arange(81.0).view(9, 9) * 1e-3  # distinct values: a unique max per window
    obj[0, 1] += torch.arange(81.0).flip(0).view(9, 9) * 1e-3
    peaks = []
    for (cy, cx, k, anchor) in ((1, 1, 3, 1), (1, 6, 3, 0), (6, 4, 4, 1)):
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                for a in (0, 1):
                    cls[0, a, cy + dy, cx + dx] = k
                    obj[0, a, cy + dy, cx + dx] = 1.0 + 0.1 * (dy + 2) + 0.01 * (dx + 2) + 0.001 * a
        obj[0, anchor, cy, cx] = 5.0  # the cluster's strongest prediction
        peaks.append((anchor, cy, cx, k))
    return obj, cls, peaks


def test_fm_nms_keeps_one_per_3x3_neighbourhood_and_class():
    obj, cls, peaks = _grid_with_clusters()
    keep = fm_nms(obj, cls, 5, 3)
    # in each cluster (18 predictions of one class, 3x3 cells x 2 anchors) exactly the peak survives
    for anchor, cy, cx, k in peaks:
        window = keep[0, :, cy - 1:cy + 2, cx - 1:cx + 2]
        assert int(window.sum()) == 1, (cy, cx)
        assert bool(keep[0, anchor, cy, cx])
    # every 3x3 window holds at most one kept prediction of a cluster's class
    for y in range(1, 8):
        for x in range(1, 8):
            for k in (3, 4):
                kept = keep[0, :, y - 1:y + 2, x - 1:x + 2] & (cls[0, :, y - 1:y + 2, x - 1:x + 2] == k)
                assert int(kept.sum()) <= 1, (y, x, k)
    assert torch.equal(keep, _loops_fm_nms(obj, cls, 3))


def test_fm_nms_other_classes_do_not_suppress():
    # two anchors of one cell, different classes: both stay; same class: the weaker goes
    obj = torch.tensor([[[[2.0]], [[1.0]]]])
    assert fm_nms(obj, torch.tensor([[[[0]], [[1]]]]), 2, 3).flatten().tolist() == [True, True]
    assert fm_nms(obj, torch.tensor([[[[1]], [[1]]]]), 2, 3).flatten().tolist() == [True, False]
    # neighbours two cells apart are outside each other's 3x3 window
    obj = torch.tensor([[[[3.0, 0.0, 2.0]]]])
    cls = torch.zeros(1, 1, 1, 3, dtype=torch.long)
    assert fm_nms(obj, cls, 1, 3).flatten().tolist() == [True, False, True]
    assert fm_nms(obj, cls, 1, 5).flatten().tolist() == [True, False, False]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fm_nms_matches_brute_force_on_random_grids(seed):
    g = torch.Generator().manual_seed(seed)
    obj = torch.randn(2, 3, 5, 6, generator=g)
    cls = torch.randint(0, 3, (2, 3, 5, 6), generator=g)
    assert torch.equal(fm_nms(obj, cls, 3, 3), _loops_fm_nms(obj, cls, 3))


# --- the loss against the loop computation -------------------------------------------------

@pytest.mark.parametrize("use_nms", [False, True])
def test_value_and_gradient_match_loops(use_nms):
    g = torch.Generator().manual_seed(3)
    s = torch.randn(2, 2, 8, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(2, 2, 8, 3, 3, generator=g, dtype=torch.float64) * 2
    loss = YOLOKDLoss(fm_nms=use_nms, objectness_weight=0.5, class_weight=2.0, box_weight=1.5)
    value = loss(s, t)
    assert value.item() == pytest.approx(_loops_loss(s.detach(), t, use_nms, (0.5, 2.0, 1.5)), rel=1e-9)
    value.backward()
    # the gradient against central differences of the loop computation
    eps = 1e-6
    for index in [(0, 0, 0, 0, 0), (0, 1, 4, 1, 2), (1, 0, 6, 2, 1), (1, 1, 2, 0, 0), (0, 0, 3, 2, 2)]:
        up, down = s.detach().clone(), s.detach().clone()
        up[index] += eps
        down[index] -= eps
        numeric = (_loops_loss(up, t, use_nms, (0.5, 2.0, 1.5))
                   - _loops_loss(down, t, use_nms, (0.5, 2.0, 1.5))) / (2 * eps)
        assert s.grad[index].item() == pytest.approx(numeric, rel=1e-5, abs=1e-8), index


def test_hand_computed_single_prediction():
    # one image, one anchor, one cell, two classes; teacher: to = 0 (o = 1/2), classes equal
    # (p = 1/2, 1/2), box (0, 0, 1, 0) -> b = (1/2, 1/2, 1, 0). student: to = 0, classes (0, 0),
    # box (0, 0, 0, 0): objectness and class terms vanish, box term = o * (1 - 0)^2 = 1/2.
    t = torch.tensor([0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0]).view(1, 1, 7, 1, 1)
    s = torch.zeros(1, 1, 7, 1, 1)
    assert YOLOKDLoss()(s, t).item() == pytest.approx(0.5, abs=1e-7)
    # student objectness logit log(3) (q = 3/4): KL_bin(1/2 || 3/4) = 1/2 ln(2/3) + 1/2 ln 2
    s2 = s.clone()
    s2[0, 0, 4] = math.log(3.0)
    expected = 0.5 + 0.5 * math.log(2 / 3) + 0.5 * math.log(2)
    assert YOLOKDLoss()(s2, t).item() == pytest.approx(expected, rel=1e-6)


def test_objectness_scales_class_and_box_terms():
    # a teacher sure there is nothing (to = -30) teaches only "no object": class and box free
    t = torch.zeros(1, 1, 8, 2, 2)
    t[:, :, 4] = -30.0
    s = torch.randn(1, 1, 8, 2, 2)
    s[:, :, 4] = -30.0
    assert YOLOKDLoss()(s, t).item() == pytest.approx(0.0, abs=1e-6)


def test_zero_when_student_equals_teacher():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(3, 3, 15, 4, 4, generator=g)
    for use_nms in (False, True):
        # with FM-NMS the suppressed teacher objectness is 0, which the student does not match
        value = YOLOKDLoss(fm_nms=use_nms)(x, x.clone()).item()
        if use_nms:
            assert value > 0
        else:
            assert value == pytest.approx(0.0, abs=1e-5)


def test_gradients_reach_student_not_teacher():
    g = torch.Generator().manual_seed(5)
    s = torch.randn(2, 3, 15, 4, 4, generator=g, requires_grad=True)
    t = torch.randn(2, 3, 15, 4, 4, generator=g, requires_grad=True)
    before = t.detach().clone()
    YOLOKDLoss()(s, t).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None and torch.equal(t.detach(), before)


# --- shapes -------------------------------------------------------------------------------

def test_non_detection_output_is_user_error():
    with pytest.raises(kdcore.UserError, match="raw head output") as err:
        kdcore.build("loss", "yolo_kd", context={"student_shape": (32, 8, 8), "teacher_shape": (96, 8, 8)})
    assert "(32, 8, 8)" in str(err.value) and "student_module: head" in str(err.value)
    with pytest.raises(kdcore.UserError, match="raw head output"):
        YOLOKDLoss()(torch.randn(2, 10), torch.randn(2, 10))


def test_mismatched_heads_are_user_error():
    with pytest.raises(kdcore.UserError, match="same anchors"):
        YOLOKDLoss()(torch.randn(2, 3, 15, 8, 8), torch.randn(2, 5, 15, 8, 8))


def test_bad_neighbourhood_is_user_error():
    with pytest.raises(kdcore.UserError, match="odd"):
        kdcore.build("loss", "yolo_kd", neighbourhood=2)


# --- end to end ---------------------------------------------------------------------------

@pytest.mark.e2e
def test_preset_runs_end_to_end(tmp_path):
    summary = run_preset("kdcore_plugin_yolo_kd", "fashion_scenes.yaml", tmp_path)
    assert summary["algo"] == "teacher_student" and summary["epochs"] == 1
    assert 0.0 <= summary["student"]["map50"] <= 100.0 and 0.0 <= summary["teacher"]["map50"] <= 100.0
    assert any(term.startswith("yolo_kd") for term in summary["last_train"]), summary["last_train"]


def test_teacher_outputs_stored_in_half_precision_are_exact_enough():
    # trainer.teacher_cache stores dense teacher outputs as float16: the loss barely moves
    g = torch.Generator().manual_seed(6)
    s = torch.randn(4, 3, 15, 8, 8, generator=g)
    t = torch.randn(4, 3, 15, 8, 8, generator=g) * 3
    exact = YOLOKDLoss()(s, t).item()
    assert YOLOKDLoss()(s, t.half().float()).item() == pytest.approx(exact, rel=1e-3)
