"""Built-in algorithms: plain supervised training, and teacher-student distillation."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..components import Algorithm, Batch, Distiller
from ..errors import UserError
from ..hookspecs import hookimpl
from ..specs import Component


class Vanilla(Algorithm):
    """The student alone on the task's own loss: teachers and baselines are trained with it."""

    def __init__(self, student: nn.Module, task: Any, distiller: Distiller | None = None) -> None:
        if distiller is not None and distiller.points:
            raise UserError("algorithm 'vanilla' trains without teachers, but the config has "
                            "distill points; use --algo teacher_student, or drop 'teachers'",
                            key_path="algorithm")
        super().__init__(student, task, None)

    def training_step(self, batch: Batch, *, epoch: int, step: int) -> dict[str, torch.Tensor]:
        outputs = self.student(batch.inputs)
        return {"task": self.task.loss(outputs, batch.targets)}


class TeacherStudent(Algorithm):
    """Student loss (weighted) plus the weighted distillation terms of every head.

    :param student_loss_weight: weight of the task loss on the labels (0 = soft targets only).
    """

    def __init__(self, student: nn.Module, task: Any, distiller: Distiller | None = None,
                 student_loss_weight: float = 1.0) -> None:
        if distiller is None or not distiller.points:
            raise UserError("algorithm 'teacher_student' needs at least one teacher with a distill "
                            "point (teachers[0].distill); use --algo vanilla to train alone",
                            key_path="algorithm")
        super().__init__(student, task, distiller)
        self.student_loss_weight = student_loss_weight

    def training_step(self, batch: Batch, *, epoch: int, step: int) -> dict[str, torch.Tensor]:
        assert self.distiller is not None
        outputs, student_features = self.student_forward(batch.inputs)
        teacher_features = self.distiller.teacher_features(batch.inputs, indices=batch.indices)
        terms: dict[str, torch.Tensor] = {}
        if self.student_loss_weight:
            terms["task"] = self.student_loss_weight * self.task.loss(outputs, batch.targets)
        terms.update(self.distiller.losses(student_features, teacher_features, targets=batch.targets,
                                      indices=batch.indices, epoch=epoch, step=step))
        return terms


@hookimpl
def kdcore_algorithms() -> list[Component]:
    return [
        Component("vanilla", Vanilla, "supervised training of the student alone"),
        Component("teacher_student", TeacherStudent,
                  "task loss + weighted distillation losses from frozen teachers"),
    ]
