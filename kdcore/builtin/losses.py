"""Built-in loss: Hinton KD, the base every method builds on, so the default job runs on the
core alone (kdcore-plugin-kd now ships only its preset and docs)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..components import Loss
from ..hookspecs import hookimpl
from ..specs import Component


class KDLoss(Loss):
    """``T^2 * KL(softmax(teacher / T) || softmax(student / T))``, summed over classes and
    averaged over the batch (Hinton, Vinyals, Dean 2015). The ``T^2`` keeps gradient
    magnitudes comparable across temperatures, as in the paper.

    :param temperature: softening temperature ``T`` (> 0).
    """

    def __init__(self, temperature: float = 4.0) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, **extra: Any) -> torch.Tensor:
        t = self.temperature
        # upcast only what is not float32 already (a no-op cast is still a dispatched op a step)
        student = student if student.dtype == torch.float32 else student.float()
        teacher = teacher if teacher.dtype == torch.float32 else teacher.float()
        log_p_student = F.log_softmax(student / t, dim=1)
        log_p_teacher = F.log_softmax(teacher / t, dim=1)
        kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
        return kl * (t * t)


@hookimpl
def kdcore_losses() -> list[Component]:
    return [Component("kd", KDLoss, "Hinton KD: T^2 * KL(softmax(t/T) || softmax(s/T)), batch mean")]
