"""The activation-boundary loss (Heo, Lee, Yun, Choi, AAAI 2019) and its initialisation stage."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

import kdcore

if TYPE_CHECKING:
    from kdcore import DistillationHead


class ABLoss(kdcore.Loss):
    """Transfers *which neurons fire*: on PRE-ReLU features, a student response ``s`` (after
    its connector) is pushed below ``-m`` where the teacher's ``t <= 0`` and above ``+m`` where
    ``t > 0``, with a squared hinge::

        L = scale / B * sum[ (s + m)^2 * 1(s > -m and t <= 0) + (s - m)^2 * 1(s <= m and t > 0) ]

    ``scale = 3/1000`` and the division by the batch size ``B`` are the reference code's
    normalisation. It is zero once every student response sits on the teacher's side of the
    boundary by at least the margin.

    The method's point is an initialisation: :meth:`stages` declares a stage that trains the
    student and the head's connectors on this loss alone (``init_weight * L``, head weight not
    applied) before main training. Main training may then give the loss ``weight: 0`` (the
    reference: classification/KD only); the stage still runs, as the core runs every stage a
    head's losses declare.

    :param margin: ``m`` (>= 0), the boundary margin.
    :param scale: factor on the batch-averaged sum.
    :param init_epochs: epochs of the initialisation stage (0 skips it).
    :param init_lr: learning rate of the stage (SGD, momentum 0.9, no weight decay).
    :param init_weight: this layer's factor in the stage (the reference weighs layers
        1/4, 1/2, 1 from shallow to deep).
    """

    def __init__(self, margin: float = 1.0, scale: float = 3.0 / 1000.0, init_epochs: int = 2,
                 init_lr: float = 0.05, init_weight: float = 1.0) -> None:
        super().__init__()
        if margin < 0:
            raise ValueError(f"margin must be >= 0, got {margin}")
        if init_epochs < 0:
            raise ValueError(f"init_epochs must be >= 0, got {init_epochs}")
        self.margin = float(margin)
        self.scale = float(scale)
        self.init_epochs = int(init_epochs)
        self.init_lr = float(init_lr)
        self.init_weight = float(init_weight)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, **extra: Any) -> torch.Tensor:
        s = student.float()
        t = teacher.detach().float()
        m = self.margin
        should_be_off = ((s > -m) & (t <= 0)).to(s.dtype)
        should_be_on = ((s <= m) & (t > 0)).to(s.dtype)
        total = ((s + m).pow(2) * should_be_off + (s - m).pow(2) * should_be_on).sum()
        return total / s.shape[0] * self.scale

    def stages(self, head: "DistillationHead") -> list[kdcore.PreTraining]:
        def loss(student: torch.Tensor, teacher: torch.Tensor, **extra: Any) -> torch.Tensor:
            s, t = head.connect(student, teacher)
            return self.init_weight * self(s, t, **extra)

        return [kdcore.PreTraining("ab_init", self.init_epochs, loss, parameters=None,
                                   needs_student=True, lr=self.init_lr)]
