"""The detection task: the metric on hand-built predictions, decoding and NMS, the YOLO loss
(hand-computed, empty and unlabelled scenes), checks of outputs and boxes, the detector zoo."""

from __future__ import annotations

import math

import pytest
import torch

import kdcore
from kdcore.assemble import keep_labels
from kdcore.data import TensorSplit
from kdcore.data.augment import HorizontalFlip, RandomCrop
from kdcore_plugin_dense.detection import UNLABELLED, DetectionTask
from kdcore_plugin_dense.models import yolo_student, yolo_teacher

ANCHORS = ((16.0, 16.0), (8.0, 24.0))


def _task(**kw) -> DetectionTask:
    return DetectionTask(num_classes=3, image_size=(64, 64), anchors=ANCHORS, **kw)


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def _raw(predictions: list[tuple[int, float, float, float, float, int, float, int]], n: int = 1) -> torch.Tensor:
    """A raw head output (n, 2 anchors, 5 + 3, 8, 8) whose decoding gives exactly the listed
    predictions ``(image, cx, cy, w, h, class, score, anchor)``; every other prediction has
    objectness ~0 (logit -30)."""
    out = torch.zeros(n, 2, 8, 8, 8, dtype=torch.float64)
    out[:, :, 4] = -30.0
    for image, cx, cy, w, h, cls, score, anchor in predictions:
        x, y = int(cx // 8), int(cy // 8)
        out[image, anchor, 0, y, x] = _logit(cx / 8 - x)
        out[image, anchor, 1, y, x] = _logit(cy / 8 - y)
        out[image, anchor, 2, y, x] = math.log(w / ANCHORS[anchor][0])
        out[image, anchor, 3, y, x] = math.log(h / ANCHORS[anchor][1])
        out[image, anchor, 4, y, x] = _logit(score)
        out[image, anchor, 5 + cls, y, x] = 40.0  # class probability 1 - 2e-17
    return out


def _boxes(rows: list[list[list[float]]], m: int = 3) -> torch.Tensor:
    out = torch.full((len(rows), m, 5), -1.0)
    for i, scene in enumerate(rows):
        for j, row in enumerate(scene):
            out[i, j] = torch.tensor(row)
    return out


# --- the metric -------------------------------------------------------------------------

def test_map_on_hand_built_predictions():
    # image 0: a perfect detection of its class-1 box (score 0.9); image 1: a class-1
    # detection of its box [8, 8, 40, 40) shifted by 2 px each way (IoU 30*30 / (2*32*32 - 900)
    # = 0.7840: a match from IoU 0.50 to 0.75, none from 0.80), score 0.8; and a class-2
    # detection where no class-2 box exists (class 2 has no ground truth, so COCO leaves it out).
    # class 1: AP = 1 at the six thresholds 0.50..0.75; at 0.80..0.95 one of the two boxes is found
    # by the top-ranked detection: AP = 51/101 (101-point interpolation, recall 0..0.5 at precision 1)
    task = _task()
    out = _raw([(0, 20, 20, 16, 24, 1, 0.9, 0), (1, 26, 26, 32, 32, 1, 0.8, 0),
                (1, 50, 50, 10, 10, 2, 0.7, 0)], n=2)
    targets = _boxes([[[12, 8, 28, 32, 1]], [[8, 8, 40, 40, 1]]])
    metric = task.new_metric()
    metric.update(out, targets)
    scores = metric.compute()
    assert scores["map50"] == pytest.approx(100.0, abs=1e-6)
    assert scores["map75"] == pytest.approx(100.0, abs=1e-6)
    assert scores["map"] == pytest.approx(100.0 * (6 + 4 * 51 / 101) / 10, abs=1e-4)


def test_map_scores_scenes_without_objects():
    # a scene with no box and no detection changes nothing; a detection there is a false positive
    task = _task()
    hit = (0, 20, 20, 16, 24, 1, 0.5, 0)
    targets = _boxes([[[12, 8, 28, 32, 1]], []])
    clean = task.new_metric()
    clean.update(_raw([hit], n=2), targets)
    assert clean.compute()["map50"] == pytest.approx(100.0, abs=1e-6)
    noisy = task.new_metric()
    noisy.update(_raw([hit, (1, 44, 44, 16, 16, 1, 0.9, 0)], n=2), targets)
    # the false positive ranks first: precision 1/2 at recall 1 -> AP 0.5
    assert noisy.compute()["map50"] == pytest.approx(50.0, abs=1e-6)


# --- decoding and NMS ---------------------------------------------------------------------

def test_detect_decodes_and_suppresses_per_class():
    task = _task()
    out = _raw([(0, 20, 20, 16, 24, 1, 0.9, 0), (0, 21, 21, 16, 24, 1, 0.6, 1),  # duplicate
                (0, 36, 36, 16, 16, 2, 0.5, 0)])
    found = task.detect(out)
    assert int(found.counts[0]) == 2
    assert found.labels[0, :2].tolist() == [1, 2]
    assert found.scores[0, :2].tolist() == pytest.approx([0.9, 0.5], abs=1e-6)
    assert found.boxes[0, 0].tolist() == pytest.approx([12, 8, 28, 32], abs=1e-5)
    assert found.labels[0, 2:].eq(-1).all() and found.scores[0, 2:].eq(0).all()


def test_detect_keeps_at_most_max_detections_per_image():
    task = _task(max_detections=2, score_threshold=0.0, nms_iou=1.0)
    out = torch.zeros(3, 2, 8, 8, 8)
    found = task.detect(out)
    assert found.counts.tolist() == [2, 2, 2] and found.boxes.shape == (3, 2, 4)


# --- the loss -----------------------------------------------------------------------------

def _iou(a, b) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_loss_hand_computed_for_zero_logits():
    # all logits 0: every prediction is its anchor box at its cell centre, objectness 1/2, uniform
    # classes. One box [10, 4, 30, 36) class 2: centre (20, 20) in cell (2, 2) at offsets (0.5, 0.5);
    # shape IoU with anchor 0 (16x16): 256/(640+256-256) = 0.4, anchor 1 (8x24): 192/640 = 0.3 -> anchor 0
    task = _task()
    out = torch.zeros(1, 2, 8, 8, 8, dtype=torch.float64)
    gt = [10.0, 4.0, 30.0, 36.0]
    targets = _boxes([[gt + [2.0]]])
    box = (2 - 640 / 4096) * ((0.5 - 0.5) ** 2 * 2 + math.log(20 / 16) ** 2 + math.log(32 / 16) ** 2)
    cls = math.log(3)
    counted = 0
    for a, (pw, ph) in enumerate(ANCHORS):
        for y in range(8):
            for x in range(8):
                cx, cy = 8 * x + 4, 8 * y + 4
                pred = [cx - pw / 2, cy - ph / 2, cx + pw / 2, cy + ph / 2]
                assigned = (a, y, x) == (0, 2, 2)
                counted += assigned or _iou(pred, gt) <= 0.6
    assert task.loss(out, targets).item() == pytest.approx(box + cls + counted * math.log(2), rel=1e-9)


def test_loss_near_zero_for_a_perfect_prediction_and_grows_off_it():
    task = _task()
    gt = [[12.0, 8.0, 28.0, 32.0, 1.0]]
    out = _raw([(0, 20, 20, 16, 24, 1, 1 - 1e-12, 0)])
    targets = _boxes([gt])
    assert task.loss(out, targets).item() == pytest.approx(0.0, abs=1e-8)
    shifted = out.clone()
    shifted[0, 0, 2, 2, 2] += 0.3
    assert task.loss(shifted, targets).item() == pytest.approx((2 - 384 / 4096) * 0.09, rel=1e-6)


def test_scene_without_objects_trains_objectness_down():
    task = _task()
    out = torch.randn(2, 2, 8, 8, 8, requires_grad=True)
    targets = _boxes([[], []])
    loss = task.loss(out, targets)
    expected = torch.nn.functional.softplus(out.detach()[:, :, 4]).sum() / 2
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()
    assert (out.grad[:, :, 4] > 0).all()  # every objectness logit is pushed down
    assert out.grad[:, :, :4].abs().sum() == 0 and out.grad[:, :, 5:].abs().sum() == 0


def test_unlabelled_scenes_are_left_out():
    task = _task()
    g = torch.Generator().manual_seed(0)
    out = torch.randn(2, 2, 8, 8, 8, generator=g, requires_grad=True)
    labelled = _boxes([[[12, 8, 28, 32, 1]]])
    both = torch.cat([labelled, torch.full_like(labelled, UNLABELLED)])
    loss = task.loss(out, both)
    assert loss.item() == pytest.approx(task.loss(out[:1].detach(), labelled).item(), rel=1e-6)
    loss.backward()
    assert out.grad[1].abs().sum() == 0
    only_unlabelled = task.loss(out, torch.full_like(both, UNLABELLED))
    assert only_unlabelled.item() == 0.0


def test_keep_labels_marks_whole_scenes_and_survives_augmentation():
    boxes = _boxes([[[12, 8, 28, 32, 1]], [[0, 0, 10, 10, 0], [30, 30, 40, 50, 2]], [], [[1, 1, 5, 5, 2]]])
    split = keep_labels(TensorSplit(torch.zeros(4, 1, 64, 64), boxes), 2, UNLABELLED)
    hidden = (split.targets[:, :, 4] == UNLABELLED).all(1)
    assert int(hidden.sum()) == 2
    kept = ~hidden
    assert torch.equal(split.targets[kept], boxes[kept])
    g = torch.Generator().manual_seed(0)
    x, moved = RandomCrop(8).apply(split.inputs, split.targets, g, kind="boxes")
    x, moved = HorizontalFlip(1.0).apply(x, moved, g, kind="boxes")
    assert torch.equal((moved[:, :, 4] == UNLABELLED).all(1), hidden)
    assert moved[hidden].eq(UNLABELLED).all()  # whole rows, coordinates too
    assert moved[~hidden][moved[~hidden][:, :, 4] == -1].eq(-1).all()  # padding stays padding
    _task().check_targets(split.targets, "data")


# --- checks -------------------------------------------------------------------------------

@pytest.mark.parametrize("row, message", [
    ([50, 10, 70, 20, 1], "outside the 64x64 image"),
    ([-2, 10, 20, 20, 1], "outside the 64x64 image"),
    ([30, 10, 20, 20, 1], "x2 <= x1"),
    ([10, 30, 20, 30, 1], "x2 <= x1 or y2 <= y1"),
    ([10, 10, 20, 20, 3], "class outside 0..2"),
])
def test_bad_boxes_are_named(row, message):
    with pytest.raises(kdcore.UserError, match=message) as err:
        _task().check_targets(_boxes([[], [[1, 1, 5, 5, 0], row]]), "data (x) train split")
    assert "scene 1 box 1" in str(err.value) and "data (x) train split" in str(err.value)


def test_outputs_that_are_not_this_head_are_named():
    task = _task()
    task.check_output(torch.zeros(2, 2, 8, 8, 8))
    with pytest.raises(kdcore.UserError, match="detection data set.*outputs 10"):
        task.check_output(torch.zeros(2, 10), where="student")
    with pytest.raises(kdcore.UserError, match="3 anchors per cell but data.anchors lists 2"):
        task.check_output(torch.zeros(2, 3, 8, 8, 8), where="student")
    with pytest.raises(kdcore.UserError, match="9 channels per anchor"):
        task.check_output(torch.zeros(2, 2, 9, 8, 8), where="student")
    with pytest.raises(kdcore.UserError, match="data.anchors"):
        DetectionTask(3, (64, 64), anchors=[[10, 0]])


def test_zoo_detectors_have_tappable_paths_and_the_task_layout():
    task = DetectionTask(10, (64, 64))
    for factory in (yolo_teacher, yolo_student):
        model = factory()
        out = model(torch.randn(2, 1, 64, 64))
        task.check_output(out)
        names = dict(model.named_modules())
        assert {"backbone.stage1", "neck", "head"} <= set(names)
    assert sum(p.numel() for p in yolo_teacher().parameters()) > 5 * sum(p.numel() for p in yolo_student().parameters())
