"""The Factor Transfer loss (Kim, Park, Kwak, NeurIPS 2018)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

import kdcore

REDUCTIONS = ("batchmean", "mean")


class FTLoss(kdcore.Loss):
    """``|| Q/||Q||_2 - P/||P||_2 ||_p`` between the student factor ``Q`` (translator output)
    and the teacher factor ``P`` (paraphraser output), each flattened per sample.

    The teacher factor is detached: it is a fixed target, the paraphraser is trained only by
    its own reconstruction stage. An all-zero factor stays zero after normalisation (no NaN).

    :param p: the norm of the difference (the paper uses 1).
    :param reduction: ``"batchmean"`` - the per-sample p-norm, averaged over the batch (the
        paper's formula); ``"mean"`` - ``|d|^p`` averaged over every element, which is what the
        reference code computes (``F.l1_loss`` of the normalised factors) and what its weights
        (beta 500 in the paper's code, 200 in RepDistiller) are tuned for. For ``p = 1`` the two
        differ by the factor size ``C*H*W``.
    """

    def __init__(self, p: float = 1.0, reduction: str = "batchmean") -> None:
        super().__init__()
        if p < 1:
            raise ValueError(f"p must be >= 1, got {p}")
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")
        self.p = float(p)
        self.reduction = reduction

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, **extra: Any) -> torch.Tensor:
        q = F.normalize(student.float().flatten(1), p=2, dim=1)
        t = F.normalize(teacher.detach().float().flatten(1), p=2, dim=1)
        diff = q - t
        if self.reduction == "mean":
            return diff.abs().pow(self.p).mean()
        return torch.linalg.vector_norm(diff, ord=self.p, dim=1).mean()
