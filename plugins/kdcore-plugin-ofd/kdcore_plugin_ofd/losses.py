"""The OFD loss (Heo, Kim, Yun, Park, Kwak, Choi, "A Comprehensive Overhaul of Feature
Distillation", ICCV 2019): margin ReLU on the teacher, partial L2 to the student."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

import kdcore

#: below this ``P(x < 0)`` the conditional mean is numerically meaningless; use ``-3 s``.
MIN_NEGATIVE_MASS = 1e-3


def bn_margin(bn: nn.Module) -> torch.Tensor:
    """Per-channel margin ``m_c = E[x | x < 0]`` for ``x ~ N(mu_c, s_c^2)``, the distribution a
    BatchNorm's output has per channel: ``s = |gamma|``, ``mu = beta`` (``1``, ``0`` without
    affine parameters)::

        m = mu - s * phi(mu / s) / Phi(-mu / s)   if Phi(-mu / s) > 0.001,  else  -3 s

    The teacher's negative responses carry little information (the ReLU removes them); above
    this value they are kept, below it they are clipped to it.
    """
    channels = bn.num_features
    weight = bn.weight if bn.weight is not None else torch.ones(channels)
    bias = bn.bias if bn.bias is not None else torch.zeros(channels)
    s = weight.detach().double().abs().cpu().clamp_min(1e-12)
    mu = bias.detach().double().cpu()
    z = mu / s
    negative_mass = 0.5 * torch.erfc(z / math.sqrt(2.0))  # Phi(-z), accurate in the tail
    density = torch.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
    conditional = mu - s * density / negative_mass.clamp_min(MIN_NEGATIVE_MASS)
    return torch.where(negative_mass > MIN_NEGATIVE_MASS, conditional, -3.0 * s).float()


class OFDLoss(kdcore.Loss):
    """Partial L2 between the student's connected pre-ReLU feature ``S`` and the teacher's
    pre-ReLU feature clipped from below by its margin, ``T = max(T_raw, m_c)``::

        d = sum( (S - T)^2 * 1[(S > T) or (T > 0)] ) / batch / div_factor

    Where the teacher is negative and the student is already below it, both ReLUs output zero
    and nothing is transferred. The margin is computed once, when the loss is built, from the
    BatchNorm at the teacher tap (``teacher_module``, context), and kept as a buffer.

    :param teacher_module: the teacher module at the tapped path (context); must be the
        BatchNorm before the ReLU, tapped at its output (``teacher_module: stageK.bn``).
    :param div_factor: divides the batch-averaged sum: 1000 on CIFAR in the paper's code
        (10000 on ImageNet; mmrazor's ``mul_factor``).
    """

    def __init__(self, teacher_module: nn.Module | None = None, div_factor: float = 1000.0) -> None:
        super().__init__()
        if not isinstance(teacher_module, nn.modules.batchnorm._BatchNorm):
            found = "the model output" if teacher_module is None else type(teacher_module).__name__
            raise kdcore.UserError(
                f"ofd reads its margin from the teacher's BatchNorm before the ReLU, but the "
                f"teacher tap is {found}; tap the BatchNorm's output, e.g. teacher_module: "
                f"stage2.bn (student_module likewise, with a conv1x1_bn student_connector)")
        if div_factor <= 0:
            raise ValueError(f"div_factor must be > 0, got {div_factor}")
        self.div_factor = float(div_factor)
        self.register_buffer("margin", bn_margin(teacher_module))

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, **extra: Any) -> torch.Tensor:
        if teacher.dim() < 2 or teacher.shape[1] != self.margin.numel():
            raise kdcore.UserError(
                f"ofd: the teacher feature has {tuple(teacher.shape[1:])} per sample but its "
                f"BatchNorm has {self.margin.numel()} channels; tap the BatchNorm's output")
        # no-op casts and detaches skipped: each is still a dispatched op a step
        s = student if student.dtype == torch.float32 else student.float()
        if teacher.requires_grad:  # a trainable teacher connector: OFD's target stays fixed
            teacher = teacher.detach()
        margin = self.margin.view(1, -1, *([1] * (teacher.dim() - 2)))
        t = torch.maximum(teacher if teacher.dtype == torch.float32 else teacher.float(), margin)
        keep = ((s > t) | (t > 0)).to(s.dtype)
        return ((s - t).pow(2) * keep).sum() / (s.shape[0] * self.div_factor)
