"""Cosine-similarity feature matching: the student feature should point where the teacher's does.

Unlike a squared error it ignores the features' scale, so student and teacher need not have
comparable magnitudes (only comparable shapes, which a connector provides).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F

import kdcore

Mode = Literal["sample", "position"]


class CosineFeatureLoss(kdcore.Loss):
    """``1 - cos(student, teacher)``, averaged.

    :param mode: ``sample``: one cosine per sample over the whole flattened feature;
        ``position``: for (C, H, W) features, one cosine over channels per spatial position,
        averaged over positions and the batch.
    :param eps: floor of the norms, so an all-zero feature gives a finite loss.
    :param student_shape: context value from kdcore, checked against ``mode`` at build time.
    """

    def __init__(self, mode: Mode = "sample", eps: float = 1e-8,
                 student_shape: tuple[int, ...] | None = None) -> None:
        super().__init__()
        if mode not in ("sample", "position"):
            raise kdcore.UserError(f"cosine_feature: mode must be 'sample' or 'position', got {mode!r}")
        if eps <= 0:
            raise kdcore.UserError(f"cosine_feature: eps must be > 0, got {eps!r}")
        if mode == "position" and student_shape is not None and len(student_shape) != 3:
            raise kdcore.UserError(
                f"cosine_feature: mode 'position' needs (C, H, W) features, but the student "
                f"feature is {tuple(student_shape)}; tap a convolutional layer or use mode 'sample'")
        self.mode: Mode = mode
        self.eps = float(eps)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, **extra: Any) -> torch.Tensor:
        if self.mode == "position":
            if student.dim() != 4:
                raise kdcore.UserError(f"cosine_feature: mode 'position' needs (N, C, H, W) "
                                       f"features, got {tuple(student.shape)}")
            cos = F.cosine_similarity(student.float(), teacher.float(), dim=1, eps=self.eps)
        else:
            cos = F.cosine_similarity(student.float().flatten(1), teacher.float().flatten(1),
                                      dim=1, eps=self.eps)
        return (1.0 - cos).mean()
