"""Objectness-scaled distillation and feature-map NMS (Mehta & Ozturk, "Object detection at 200
Frames Per Second", ECCV workshops 2018), on a YOLO head's raw output.

Both sides are ``(N, A, 5 + C, H, W)``: per anchor and grid cell ``tx, ty, tw, th``, the
objectness logit ``to`` and ``C`` class logits (:mod:`kdcore_plugin_dense.detection`). With the
teacher's objectness ``o = sigmoid(to_T)`` (after FM-NMS, which zeroes it where a stronger
teacher prediction of the same class sits in the 3x3 neighbourhood), class probabilities
``p = softmax(cls_T)`` and box ``b = (sigmoid(tx_T), sigmoid(ty_T), tw_T, th_T)``, summed over
anchors and cells and averaged over the batch::

    L = w_obj * KL_bin(o || sigmoid(to_S))
      + w_cls * o * KL(p || softmax(cls_S))
      + w_box * o * ||b_S - b||^2

so the class and box imitation count only where the teacher sees an object. docs/methods/yolo_kd.md
has the formulas and every deviation from the paper.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

import kdcore

OBJ = 4


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """Half precision is upcast for the sums; float64 stays float64."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def fm_nms(objectness: torch.Tensor, classes: torch.Tensor, num_classes: int, size: int = 3) -> torch.Tensor:
    """Feature-map NMS: ``keep (N, A, H, W)``, true where a prediction is the strongest (highest
    ``objectness``) among every anchor of the ``size x size`` neighbouring cells whose class
    (``classes``, the teacher's argmax) is its own. Equal maxima are all kept.

    Vectorised: one max over anchors per class, one max pooling over the neighbourhood."""
    n, a, h, w = objectness.shape
    score = _at_least_fp32(objectness)
    lowest = torch.finfo(score.dtype).min
    onehot = F.one_hot(classes, num_classes).bool()  # (N, A, H, W, C)
    per_class = torch.where(onehot, score[..., None], lowest).amax(1)  # (N, H, W, C)
    per_class = per_class.permute(0, 3, 1, 2)  # (N, C, H, W)
    best = F.max_pool2d(per_class, size, stride=1, padding=size // 2)  # pads with -inf
    best_here = best.gather(1, classes)  # (N, A, H, W): the best of each prediction's own class
    return score >= best_here


def check_head(shape: Sequence[int], side: str) -> None:
    """A per-sample raw head output is ``(A, 5 + C, H, W)`` with at least one class."""
    s = tuple(shape)
    if len(s) != 4 or s[1] < 6:
        raise kdcore.UserError(
            f"yolo_kd needs the detector's raw head output (anchors, 5 + classes, H, W) per image, "
            f"but the {side} feature is {s}; tap the detector's head (student_module: head, "
            f"teacher_module: head), not a backbone or neck feature or a classifier's logits")


class YOLOKDLoss(kdcore.Loss):
    """The objectness-scaled distillation loss with optional FM-NMS (module docstring).

    :param fm_nms: suppress all but the strongest teacher prediction of each class within
        ``neighbourhood x neighbourhood`` cells (all anchors) before distilling (paper: on).
    :param neighbourhood: the FM-NMS window, odd (paper: 3).
    :param objectness_weight, class_weight, box_weight: weights of the three terms (paper: 1).
    """

    def __init__(self, fm_nms: bool = True, neighbourhood: int = 3, objectness_weight: float = 1.0,
                 class_weight: float = 1.0, box_weight: float = 1.0,
                 student_shape: Sequence[int] | None = None, teacher_shape: Sequence[int] | None = None) -> None:
        super().__init__()
        if neighbourhood < 1 or neighbourhood % 2 == 0:
            raise kdcore.UserError(f"yolo_kd: neighbourhood must be an odd number >= 1 (the paper "
                                   f"uses 3), got {neighbourhood}")
        for name, value in (("objectness_weight", objectness_weight), ("class_weight", class_weight),
                            ("box_weight", box_weight)):
            if value < 0:
                raise kdcore.UserError(f"yolo_kd: {name} must be >= 0, got {value}")
        for shape, side in ((student_shape, "student"), (teacher_shape, "teacher")):
            if shape is not None:
                check_head(shape, side)
        self.fm_nms, self.neighbourhood = bool(fm_nms), int(neighbourhood)
        self.weights = (float(objectness_weight), float(class_weight), float(box_weight))

    def teacher_targets(self, teacher: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The teacher's objectness (FM-NMS applied), class probabilities and box, as the
        student imitates them: ``(N, A, H, W)``, ``(N, A, C, H, W)``, ``(N, A, 4, H, W)``."""
        t = _at_least_fp32(teacher.detach())
        logits = t[:, :, OBJ]
        probs = t[:, :, 5:].softmax(2)
        objectness = logits.sigmoid()
        if self.fm_nms:  # ranked by the logit: sigmoid saturates to equal values
            objectness = objectness * fm_nms(logits, probs.argmax(2), probs.shape[2], self.neighbourhood)
        box = torch.cat([t[:, :, :2].sigmoid(), t[:, :, 2:4]], dim=2)
        return objectness, probs, box

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, **extra: Any) -> torch.Tensor:
        check_head(student.shape[1:], "student")
        check_head(teacher.shape[1:], "teacher")
        if student.shape != teacher.shape:
            raise kdcore.UserError(f"yolo_kd compares predictions anchor by anchor and cell by cell, "
                                   f"but the student head gives {tuple(student.shape[1:])} and the "
                                   f"teacher head {tuple(teacher.shape[1:])} per image; give both "
                                   f"the same anchors, classes and grid")
        o, p, b = self.teacher_targets(teacher)
        s = _at_least_fp32(student)
        # objectness: binary KL(o || sigmoid(s)) = BCE(s, o) - H(o), zero when they agree
        entropy = -(torch.special.xlogy(o, o) + torch.special.xlogy(1 - o, 1 - o))
        obj = F.binary_cross_entropy_with_logits(s[:, :, OBJ], o, reduction="none") - entropy
        # classes: KL(p || softmax(s)) per prediction, scaled by the teacher's objectness
        kl = (torch.special.xlogy(p, p) - p * s[:, :, 5:].log_softmax(2)).sum(2)
        # box: squared error of (sigmoid(tx), sigmoid(ty), tw, th), scaled likewise
        s_box = torch.cat([s[:, :, :2].sigmoid(), s[:, :, 2:4]], dim=2)
        box = (s_box - b).pow(2).sum(2)
        w_obj, w_cls, w_box = self.weights
        # where, not a product: a suppressed prediction (o = 0) must add 0 even if its error overflows
        scaled = torch.where(o > 0, o * (w_cls * kl + w_box * box), 0.0)
        total = w_obj * obj.sum() + scaled.sum()
        return total / student.shape[0]
