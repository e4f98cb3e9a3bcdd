"""Decoupled Knowledge Distillation (Zhao, Cui, Song, Qiu, Liang; CVPR 2022).

Classical KD splits into a target-class term (TCKD: the binary "ground-truth class vs the rest"
distribution) and a non-target term (NCKD: the distribution among the other classes), coupled
by the teacher's confidence: ``KD = TCKD + (1 - p_gt^T) * NCKD``. DKD weights the two freely.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

import kdcore


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """Half precision is upcast for the reduction; float64 stays float64."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _kl_rows(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """``KL(p || q)`` per row from log-probabilities (``p`` = teacher, ``q`` = student)."""
    return (log_p.exp() * (log_p - log_q)).sum(dim=1)


def binary_log_probs(z: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """``log [p_gt, 1 - p_gt]`` per row of ``softmax(z)``, from log-sum-exps so that neither
    entry underflows to ``log 0`` when one class dominates (the reference takes ``log`` of the
    summed probabilities)."""
    lse_all = z.logsumexp(dim=1)
    lse_other = z.masked_fill(gt, float("-inf")).logsumexp(dim=1)
    z_gt = z.masked_fill(~gt, 0.0).sum(dim=1)
    return torch.stack([z_gt - lse_all, lse_other - lse_all], dim=1)


def non_target_log_probs(z: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """``log softmax`` over the non-target classes only: ``(N, C - 1)``. The ground-truth column is
    removed exactly (the reference subtracts 1000 from the scaled logit: equal up to ~e^-1000)."""
    n, c = z.shape
    return F.log_softmax(z[~gt].view(n, c - 1), dim=1)


def decoupled_terms(student: torch.Tensor, teacher: torch.Tensor, targets: torch.Tensor,
                    temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample ``(TCKD, NCKD)`` at ``temperature``, without the ``T^2`` factor.

    ``TCKD = KL(b^T || b^S)`` with ``b = [p_gt, 1 - p_gt]``; ``NCKD = KL(p_hat^T || p_hat^S)``
    with ``p_hat`` the softmax over the non-target classes.
    """
    zs, zt = _at_least_fp32(student) / temperature, _at_least_fp32(teacher) / temperature
    gt = F.one_hot(targets.long(), zs.shape[1]).bool()
    tckd = _kl_rows(binary_log_probs(zt, gt), binary_log_probs(zs, gt))
    nckd = _kl_rows(non_target_log_probs(zt, gt), non_target_log_probs(zs, gt))
    return tckd, nckd


def warmup_factor(epoch: int | None, warmup_epochs: float) -> float:
    """``min((epoch + 1) / warmup, 1)``: kdcore's ``epoch`` is 0-based and mdistiller's trainer
    counts from 1, so the first epoch gets ``1 / warmup`` as in the reference. No ramp when
    ``warmup_epochs`` is 0 or when called outside training (no ``epoch``)."""
    if warmup_epochs <= 0 or epoch is None:
        return 1.0
    return min((epoch + 1) / warmup_epochs, 1.0)


def check_logits(shape: Sequence[int] | None, num_classes: int | None) -> None:
    if shape is None:
        return
    if len(shape) != 1 or shape[0] < 2:
        raise kdcore.UserError(
            f"dkd compares class logits (N, C) with C >= 2, but the feature is {tuple(shape)} per "
            f"sample; tap student_module: output and teacher_module: output")
    if num_classes is not None and shape[0] != num_classes:
        raise kdcore.UserError(
            f"dkd compares class logits, but the feature has {shape[0]} values per sample and the "
            f"data set has {num_classes} classes; tap student_module: output and "
            f"teacher_module: output")


def check_targets(targets: Any, batch: int, num_classes: int) -> torch.Tensor:
    if targets is None:
        raise kdcore.UserError("dkd needs the class labels (extra 'targets'); pass targets=... "
                               "or use an algorithm that provides them (teacher_student does)")
    if not torch.is_tensor(targets) or targets.is_floating_point() or targets.dim() != 1 \
            or targets.shape[0] != batch:
        shape = tuple(targets.shape) if torch.is_tensor(targets) else type(targets).__name__
        raise kdcore.UserError(f"dkd needs integer class labels of shape ({batch},), got {shape}; "
                               f"soft or multi-label targets are not supported")
    if int(targets.min()) < -1 or int(targets.max()) >= num_classes:
        raise kdcore.UserError(f"dkd: labels must lie in [0, {num_classes}), got "
                               f"{int(targets.min())}..{int(targets.max())}")
    return targets


class DKDLoss(kdcore.Loss):
    """``min((epoch+1)/warmup, 1) * T^2 * (alpha * TCKD + beta * NCKD)``, batch means.

    An unlabelled sample (target -1) uses the teacher's arg-max class as its target class.

    :param alpha: weight of the target-class term TCKD.
    :param beta: weight of the non-target term NCKD (mdistiller CIFAR: 8; 2 or 6 for some pairs).
    :param temperature: softening temperature ``T`` (> 0).
    :param warmup_epochs: epochs of linear ramp of the whole term (0 = none).
    """

    def __init__(self, alpha: float = 1.0, beta: float = 8.0, temperature: float = 4.0,
                 warmup_epochs: float = 20, student_shape: Sequence[int] | None = None,
                 num_classes: int | None = None) -> None:
        super().__init__()
        if temperature <= 0:
            raise kdcore.UserError(f"dkd: temperature must be > 0, got {temperature!r}")
        if alpha < 0 or beta < 0:
            raise kdcore.UserError(f"dkd: alpha and beta must be >= 0, got {alpha!r} and {beta!r}")
        if warmup_epochs < 0:
            raise kdcore.UserError(f"dkd: warmup_epochs must be >= 0, got {warmup_epochs!r}")
        check_logits(student_shape, num_classes)
        self.alpha, self.beta = float(alpha), float(beta)
        self.temperature = float(temperature)
        self.warmup_epochs = float(warmup_epochs)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, *, targets: Any = None,
                epoch: int | None = None, **extra: Any) -> torch.Tensor:
        check_logits(tuple(student.shape[1:]), None)
        if tuple(student.shape) != tuple(teacher.shape):
            raise kdcore.UserError(f"dkd: student logits {tuple(student.shape)} and teacher logits "
                                   f"{tuple(teacher.shape)} differ in shape")
        targets = check_targets(targets, student.shape[0], student.shape[1])
        # unlabelled samples (target -1, kdcore's data.labelled) take the teacher's top class
        targets = torch.where(targets < 0, teacher.argmax(dim=1), targets)
        tckd, nckd = decoupled_terms(student, teacher, targets, self.temperature)
        t2 = self.temperature ** 2
        loss = t2 * (self.alpha * tckd.mean() + self.beta * nckd.mean())
        return warmup_factor(epoch, self.warmup_epochs) * loss
