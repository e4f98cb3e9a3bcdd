"""Base class of distillers: frozen teachers, their taps, and the heads of each distill point."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import attrs
import torch
from torch import nn

from ..taps import FeatureTaps, Tap
from .head import DistillationHead


@attrs.define
class DistillPoint:
    """One place where student and teacher are compared."""

    name: str
    teacher: str
    student_tap: Tap
    teacher_tap: Tap
    head: DistillationHead


def freeze(model: nn.Module) -> nn.Module:
    """Put ``model`` in eval mode and stop gradients into its parameters, for good."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


class Distiller(nn.Module):
    """Holds the frozen teachers and computes the distillation terms of a step.

    Teachers stay in eval mode whatever ``train()`` is called with, run without autograd, and
    their weights never change. Subclasses may override :meth:`teacher_features` (e.g. to read
    a cache) or :meth:`losses` (e.g. to combine teachers). Teachers, points and heads are fixed
    at construction: the taps are bound to them then.
    """

    def __init__(self, teachers: Mapping[str, nn.Module], points: list[DistillPoint]) -> None:
        super().__init__()
        self.teachers = nn.ModuleDict({k: freeze(m) for k, m in teachers.items()})
        self.heads = nn.ModuleDict({p.name: p.head for p in points})
        self.points = points
        # teacher name -> an object whose rows(indices, device) are its tapped outputs for those
        # samples (filled by a callback: kdcore-plugin-teacher-cache)
        self.caches: dict[str, Any] = {}
        self._taps = {name: FeatureTaps(teacher, [p.teacher_tap for p in points if p.teacher == name],
                                        where=f"teachers[{name}] module path")
                      for name, teacher in self.teachers.items()}

    def train(self, mode: bool = True) -> "Distiller":
        super().train(mode)
        for teacher in self.teachers.values():
            teacher.eval()
        return self

    def student_taps(self) -> list[Tap]:
        return [p.student_tap for p in self.points]

    def teacher_features(self, inputs: torch.Tensor, **extra: Any) -> dict[str, dict[str, Any]]:
        """``{teacher_name: {tap_key: tensor}}`` for one training batch: a teacher with an output
        cache attached is read from it by ``indices`` and never run; the others are computed."""
        indices = extra.get("indices")
        if not self.caches or indices is None:  # the usual case: every teacher runs
            return self.compute_teacher_features(inputs)
        cached = [name for name in self.teachers if name in self.caches]
        features = self.compute_teacher_features(inputs, [n for n in self.teachers if n not in cached])
        for name in cached:
            features[name] = self.caches[name].rows(indices, inputs.device)
        return {name: features[name] for name in self.teachers}  # in the teachers' order

    def compute_teacher_features(self, inputs: torch.Tensor,
                                 names: Iterable[str] | None = None) -> dict[str, dict[str, Any]]:
        """Run the teachers ``names`` (default: all) on ``inputs`` without autograd and collect
        their taps.

        ``no_grad`` rather than ``inference_mode``: losses save teacher features for their
        backward (an MSE does), which inference tensors cannot be, and copying every tapped
        feature out of inference mode costs more than the mode saves (benchmarks/README.md).
        Where teacher outputs never meet autograd (the teacher-output cache, evaluation) they
        run under ``inference_mode``."""
        features: dict[str, dict[str, Any]] = {}
        with torch.no_grad():
            for name in self.teachers if names is None else names:
                features[name] = self._taps[name].run(self.teachers[name], inputs)[1]
        return features

    def losses(self, student_features: Mapping[str, Any], teacher_features: Mapping[str, Mapping[str, Any]],
               **extra: Any) -> dict[str, torch.Tensor]:
        """Every head's weighted loss terms, keyed by term name (unique across heads)."""
        terms: dict[str, torch.Tensor] = {}
        for p in self.points:
            head = self.heads[p.name]
            terms.update(head(student_features[p.student_tap.key],
                              teacher_features[p.teacher][p.teacher_tap.key], **extra))
        return terms

    def remove_taps(self) -> None:
        for taps in self._taps.values():
            taps.remove()
