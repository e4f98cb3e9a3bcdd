"""Channel-Wise Distillation (Shu et al., ICCV 2021) and the pixel-wise KD baseline.

Both compare two maps ``(N, C, H, W)`` of equal shape (logits, or features after a connector):

- CWD turns each *channel* into a distribution over its ``H*W`` positions,
  ``phi(y_c) = softmax(y_c / tau)``, and sums ``KL(phi(t_c) || phi(s_c))`` over positions,
  averaged over the ``N*C`` channels and scaled by ``tau^2`` (the paper's formula with mmrazor's
  ChannelWiseDivergence normalisation);
- pixel KD turns each *pixel* into a distribution over its ``C`` classes,
  ``softmax(y_i / T)``, and averages ``KL(p_t,i || p_s,i)`` over the ``N*H*W`` pixels, scaled
  by ``T^2`` (Hinton's KD at every position; Structured KD's pixel term).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

import kdcore


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """Half precision (a cached teacher) is upcast for the softmax; float64 stays float64."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def check_maps(loss: str, student: Sequence[int] | None, teacher: Sequence[int] | None) -> None:
    """Per-sample shapes ``(C, H, W)`` on both sides, equal: one line naming what differs."""
    if student is None or teacher is None:
        return
    s, t = tuple(student), tuple(teacher)
    if len(s) != 3 or len(t) != 3:
        raise kdcore.UserError(
            f"{loss} compares maps (C, H, W), but the student gives {s} and the teacher {t} per "
            f"sample; tap a segmentation model's logits or a convolutional feature")
    if s[1:] != t[1:]:
        raise kdcore.UserError(
            f"{loss} compares the maps position by position, but the student's is {s[1]}x{s[2]} "
            f"and the teacher's {t[1]}x{t[2]}; tap layers of the same resolution (kdcore inspect "
            f"MODEL --dataset DATA lists them), e.g. both models' output")
    if s[0] != t[0]:
        raise kdcore.UserError(
            f"{loss} compares channel by channel, but the student has {s[0]} channels and the "
            f"teacher {t[0]}; add head.student_connector: {{type: conv1x1_bn}}")


class _MapLoss(kdcore.Loss):
    name = "map loss"

    def __init__(self, temperature: float, student_shape: Sequence[int] | None,
                 teacher_shape: Sequence[int] | None) -> None:
        super().__init__()
        if not temperature > 0:
            raise kdcore.UserError(f"{self.name}: the temperature must be > 0, got {temperature!r}")
        check_maps(self.name, student_shape, teacher_shape)
        self.temperature = float(temperature)

    def _logs(self, student: torch.Tensor, teacher: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
        if student.shape != teacher.shape:
            check_maps(self.name, tuple(student.shape[1:]), tuple(teacher.shape[1:]))
        t = self.temperature
        return (F.log_softmax(_at_least_fp32(student) / t, dim=dim),
                F.log_softmax(_at_least_fp32(teacher) / t, dim=dim))


class ChannelWiseDivergence(_MapLoss):
    """``tau^2 / (N*C) * sum_{n,c} KL(softmax(t_nc / tau) || softmax(s_nc / tau))``, each
    softmax over the channel's ``H*W`` positions.

    :param tau: the temperature (the paper's ``T``; mmrazor's Cityscapes config uses 1).
    """

    name = "cwd"

    def __init__(self, tau: float = 1.0, student_shape: Sequence[int] | None = None,
                 teacher_shape: Sequence[int] | None = None) -> None:
        super().__init__(tau, student_shape, teacher_shape)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, **extra: Any) -> torch.Tensor:
        n, c = student.shape[:2]
        log_s, log_t = self._logs(student.flatten(2), teacher.flatten(2), dim=2)
        kl = (log_t.exp() * (log_t - log_s)).sum()
        return kl * (self.temperature ** 2) / (n * c)


class PixelKD(_MapLoss):
    """``T^2 / (N*H*W) * sum_{n,i} KL(softmax(t_ni / T) || softmax(s_ni / T))``, each softmax
    over the ``C`` classes of pixel ``i``.

    :param temperature: the softening temperature ``T``.
    """

    name = "pixel_kd"

    def __init__(self, temperature: float = 1.0, student_shape: Sequence[int] | None = None,
                 teacher_shape: Sequence[int] | None = None) -> None:
        super().__init__(temperature, student_shape, teacher_shape)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, **extra: Any) -> torch.Tensor:
        n, _, h, w = student.shape
        log_s, log_t = self._logs(student, teacher, dim=1)
        kl = (log_t.exp() * (log_t - log_s)).sum()
        return kl * (self.temperature ** 2) / (n * h * w)
