"""Relational knowledge distillation (Park, Kim, Lu, Cho, CVPR 2019).

RKD transfers the *geometry* of a batch rather than individual features: how far apart the
teacher puts samples (distance potential) and which angles three samples form (angle
potential). Both potentials are invariant to the scale of the embedding and only compare
within a side, so the student and teacher embeddings may have different widths
(``same_shape = False``).

Features are flattened to ``(batch, -1)`` and computed in float32. The teacher side is
detached: its geometry is the target, so a teacher connector in front of RKD is not trained
by it.

Degenerate inputs never produce NaN:

* identical samples have distance exactly 0 (computed from differences, not from a Gram
  matrix) and are left out of the mean used to normalise distances;
* a side whose pairwise distances are all 0 (constant or zero features) has potential 0;
* difference vectors of length 0 (identical samples, or ``i == j``) have cosine 0;
* fewer than 2 samples (distance) or 3 samples (angle) carry no relation: the loss is 0.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

import kdcore

#: Smallest mean distance used as a divisor; only hit when every distance is (almost) zero.
_EPS = 1e-12


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).float()


def _zero(like: torch.Tensor) -> torch.Tensor:
    """A 0 that stays in ``like``'s autograd graph (an empty slice: never NaN, even for inf)."""
    return like[:, :0].sum()


def _check_batch(student: torch.Tensor, teacher: torch.Tensor) -> None:
    if student.shape[0] != teacher.shape[0]:
        raise ValueError(f"RKD needs the same batch on both sides, got {student.shape[0]} "
                         f"student and {teacher.shape[0]} teacher samples")


def distance_potential(e: torch.Tensor) -> torch.Tensor:
    """``(B, B)`` Euclidean distances divided by the mean of the non-zero ones.

    Dividing by the batch's own mean distance makes the potential scale-invariant, so a
    32-d student can match a 96-d teacher whose features are ten times larger.
    """
    # The direct (non-matmul) mode is exact for identical rows, so their distance is 0, and
    # its gradient at 0 is 0 rather than NaN.
    d = torch.cdist(e, e, compute_mode="donot_use_mm_for_euclid_dist")
    count = (d > 0).sum().clamp_min(1)
    mean = d.sum() / count
    return d / mean.clamp_min(_EPS)


def angle_potential(e: torch.Tensor) -> torch.Tensor:
    """``(B, B, B)`` cosines: entry ``[j, i, k]`` is the cosine of the angle at ``e_j``
    between ``e_i - e_j`` and ``e_k - e_j``. Zero-length differences give cosine 0."""
    diff = e.unsqueeze(0) - e.unsqueeze(1)  # diff[j, i] = e_i - e_j
    unit = F.normalize(diff, p=2, dim=2)
    return torch.bmm(unit, unit.transpose(1, 2))


def rkd_distance_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Huber (smooth L1, delta 1) between the distance potentials, mean over all B^2 pairs."""
    s, t = _flat(student), _flat(teacher.detach())
    _check_batch(s, t)
    if s.shape[0] < 2:
        return _zero(s)
    with torch.no_grad():
        target = distance_potential(t)
    return F.smooth_l1_loss(distance_potential(s), target, beta=1.0)


def rkd_angle_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Huber (smooth L1, delta 1) between the angle potentials, mean over all B^3 triplets.

    Memory is O(B^2 * D) for the difference vectors, as in the reference implementation.
    """
    s, t = _flat(student), _flat(teacher.detach())
    _check_batch(s, t)
    if s.shape[0] < 3:
        return _zero(s)
    with torch.no_grad():
        target = angle_potential(t)
    return F.smooth_l1_loss(angle_potential(s), target, beta=1.0)


class RKDDistanceLoss(kdcore.Loss):
    """The RKD distance term alone (weight it in the head)."""

    same_shape = False

    def __init__(self) -> None:  # explicit: nn.Module's (*args, **kwargs) would accept any context
        super().__init__()

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, **extra: Any) -> torch.Tensor:
        return rkd_distance_loss(student, teacher)


class RKDAngleLoss(kdcore.Loss):
    """The RKD angle term alone (weight it in the head)."""

    same_shape = False

    def __init__(self) -> None:  # explicit: nn.Module's (*args, **kwargs) would accept any context
        super().__init__()

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, **extra: Any) -> torch.Tensor:
        return rkd_angle_loss(student, teacher)


class RKDLoss(kdcore.Loss):
    """``distance_weight * L_distance + angle_weight * L_angle``.

    The defaults 25 and 50 are the classification settings of RepDistiller and mdistiller
    (the paper's metric-learning code uses 1 and 2). A weight of 0 skips that term's
    computation, e.g. to avoid the O(B^2 * D) angle tensors on large batches.

    :param distance_weight: weight of the distance term (>= 0).
    :param angle_weight: weight of the angle term (>= 0).
    """

    same_shape = False

    def __init__(self, distance_weight: float = 25.0, angle_weight: float = 50.0) -> None:
        super().__init__()
        if distance_weight < 0 or angle_weight < 0:
            raise ValueError(f"distance_weight and angle_weight must be >= 0, got "
                             f"{distance_weight} and {angle_weight}")
        if distance_weight == 0 and angle_weight == 0:
            raise ValueError("distance_weight and angle_weight are both 0: the loss would be 0")
        self.distance_weight = float(distance_weight)
        self.angle_weight = float(angle_weight)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, **extra: Any) -> torch.Tensor:
        loss = _zero(_flat(student))
        if self.distance_weight:
            loss = loss + self.distance_weight * rkd_distance_loss(student, teacher)
        if self.angle_weight:
            loss = loss + self.angle_weight * rkd_angle_loss(student, teacher)
        return loss
