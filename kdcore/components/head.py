"""Base class of distillation heads: connectors, then one or more weighted losses."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..errors import UserError
from .pretraining import PreTraining


def _key(term: str) -> str:
    return term.replace(".", "_")


class DistillationHead(nn.Module):
    """Takes (student feature, teacher feature), maps them through optional connectors, and
    returns ``{term: weight * loss}`` for each of its losses.

    :param losses: ``{term_name: (weight, loss_module)}``.
    :param student_connector: applied to the student feature (trainable).
    :param teacher_connector: applied to the teacher feature (trainable; the teacher is not).
    :param label: where the head comes from in the config, used in error messages.
    """

    def __init__(self, losses: Mapping[str, tuple[float, nn.Module]],
                 student_connector: nn.Module | None = None, teacher_connector: nn.Module | None = None,
                 label: str = "head") -> None:
        super().__init__()
        # ModuleDict keys may not contain ".", term names may ("at@stage1.relu")
        self.losses = nn.ModuleDict({_key(name): loss for name, (_, loss) in losses.items()})
        self.terms = {_key(name): name for name in losses}
        self.weights = {_key(name): float(weight) for name, (weight, _) in losses.items()}
        self.student_connector = student_connector
        self.teacher_connector = teacher_connector
        self.label = label
        self._shapes_checked: set[str] = set()  # per-sample shapes do not change within a run

    def connect(self, student: torch.Tensor, teacher: torch.Tensor) -> tuple[Any, Any]:
        if self.student_connector is not None:
            student = self.student_connector(student)
        if self.teacher_connector is not None:
            teacher = self.teacher_connector(teacher)
        return student, teacher

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, **extra: Any) -> dict[str, torch.Tensor]:
        student, teacher = self.connect(student, teacher)
        terms: dict[str, torch.Tensor] = {}
        for key, loss in self.losses.items():
            name = self.terms[key]
            if key not in self._shapes_checked:
                if getattr(loss, "same_shape", True):
                    self.check_shapes(name, student, teacher)
                self._shapes_checked.add(key)
            terms[name] = self.weights[key] * loss(student, teacher, **extra)
        return terms

    def check_shapes(self, name: str, student: Any, teacher: Any) -> None:
        s, t = getattr(student, "shape", None), getattr(teacher, "shape", None)
        if s is not None and t is not None and tuple(s) != tuple(t):
            side = "student_connector" if self.student_connector is None else "teacher_connector"
            hint = "{type: linear}" if len(s) == 2 else "{type: conv1x1_bn}"
            raise UserError(
                f"{self.label}: loss {name!r} needs equal shapes but the student feature is "
                f"{tuple(s[1:])} and the teacher feature is {tuple(t[1:])} (per sample); "
                f"add a {side}, e.g. {side}: {hint}"
            )

    def stages(self) -> list[PreTraining]:
        """Pre-training stages declared by this head's connectors and losses."""
        owners = [self.student_connector, self.teacher_connector, *self.losses.values()]
        found: list[PreTraining] = []
        for owner in owners:
            if owner is not None and hasattr(owner, "stages"):
                found.extend(owner.stages(self))
        return found
