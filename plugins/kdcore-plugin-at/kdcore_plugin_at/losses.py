"""Activation-based Attention Transfer (Zagoruyko & Komodakis, ICLR 2017)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

import kdcore


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """Half precision is upcast for the reduction; float64 stays float64."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def attention_map(feature: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """``at(F) = normalize(flatten(mean_c |F_c|^p))``: one L2-normalised vector per sample.

    The channel mean (rather than the paper's sum) only rescales the map, which the
    normalisation removes. An all-zero map stays zero (``F.normalize`` clamps the norm).
    """
    return F.normalize(_at_least_fp32(feature).abs().pow(p).mean(dim=1).flatten(1), dim=1)


def check_shapes(student: Sequence[int] | None, teacher: Sequence[int] | None) -> None:
    """Per-sample shapes ``(C, *spatial)``: channels may differ, the spatial sizes may not."""
    if student is None or teacher is None:
        return
    s, t = tuple(student), tuple(teacher)
    if len(s) < 2 or len(t) < 2:
        raise kdcore.UserError(
            f"at needs feature maps (C, H, W) on both sides, but the student feature is {s} and "
            f"the teacher feature is {t} (per sample); tap convolutional stages, not flat "
            f"embeddings or logits")
    if s[1:] != t[1:]:
        raise kdcore.UserError(
            f"at compares attention maps position by position, but the student feature {s} and "
            f"the teacher feature {t} (per sample) have different spatial sizes {s[1:]} and "
            f"{t[1:]}; tap student and teacher layers of equal resolution")


class ATLoss(kdcore.Loss):
    """``mean((at(F_s) - at(F_t))^2)`` over the batch and the ``H*W`` positions (reference code).

    Channel counts may differ (``same_shape = False``): the attention map averages them away.
    Spatial sizes must match; they are checked when the loss is built (from the shapes kdcore
    passes) and on every call.

    :param p: exponent of the activation magnitudes, >= 1 (2 in the paper's experiments).
    """

    same_shape = False

    def __init__(self, p: float = 2.0, student_shape: Sequence[int] | None = None,
                 teacher_shape: Sequence[int] | None = None) -> None:
        super().__init__()
        if p < 1:
            # |F|^p with p < 1 has an infinite slope at 0: zero activations would give NaN grads
            raise kdcore.UserError(f"at: p must be >= 1 (the paper uses 1, 2 or 4), got {p!r}")
        check_shapes(student_shape, teacher_shape)
        self.p = float(p)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, **extra: Any) -> torch.Tensor:
        check_shapes(tuple(student.shape[1:]), tuple(teacher.shape[1:]))
        if student.shape[0] != teacher.shape[0]:
            raise kdcore.UserError(f"at: batch sizes differ, student {student.shape[0]} and "
                                   f"teacher {teacher.shape[0]}")
        diff = attention_map(student, self.p) - attention_map(teacher, self.p)
        return diff.pow(2).mean()
