"""Base class of algorithms: what one training step computes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import attrs
import torch
from torch import nn

from ..taps import FeatureTaps
from .distiller import Distiller
from .stage import Stage


@attrs.define
class Batch:
    """One training batch. ``indices`` are the samples' positions in the training split."""

    inputs: torch.Tensor
    targets: Any
    indices: torch.Tensor

    def to(self, device: torch.device | str) -> "Batch":
        move = lambda x: x.to(device, non_blocking=True) if torch.is_tensor(x) else x  # noqa: E731
        return Batch(move(self.inputs), move(self.targets), move(self.indices))


TEACHER_STATE_PREFIX = "distiller.teachers."


def is_teacher_state(name: str) -> bool:
    """Whether a name from an algorithm's ``state_dict()``/``named_parameters()`` belongs to a
    frozen teacher: those come from the teachers' own checkpoints, never from a run's."""
    return name.startswith(TEACHER_STATE_PREFIX)


class Algorithm(nn.Module):
    """Holds the student and (optionally) a distiller; returns the loss terms of a step.

    The engine sums the terms, backpropagates and steps the optimizer, so an algorithm only says
    *what* is minimised. ``student`` is what gets evaluated and exported.

    :param student: the network being trained.
    :param task: scores the student's outputs (its own loss and the metric).
    :param distiller: the teachers and distillation heads, or ``None`` for plain training.

    ``fold_teacher_batchnorm``: the engine may fold the frozen teachers' BatchNorms into their
    convolutions (``trainer.teacher_fold_bn``, kdcore/engine/frozen.py). An algorithm that reads
    the teachers' BatchNorm layers while training (data-free inversion does) sets it to False.
    """

    fold_teacher_batchnorm = True

    def __init__(self, student: nn.Module, task: Any, distiller: Distiller | None = None) -> None:
        super().__init__()
        self.student = student
        self.task = task
        self.distiller = distiller
        taps = distiller.student_taps() if distiller is not None else []
        self.student_taps = FeatureTaps(student, taps, where="student module path")

    def training_step(self, batch: Batch, *, epoch: int, step: int) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def student_forward(self, inputs: torch.Tensor) -> tuple[Any, dict[str, Any]]:
        """Run the student; return its output and the tapped features."""
        return self.student_taps.run(self.student, inputs)

    def evaluation_models(self) -> dict[str, nn.Module]:
        """The networks scored after each epoch, by name. The first is the one exported."""
        return {"student": self.student}

    def stages(self) -> Iterator[tuple[str, Stage]]:
        """``(point_name, stage)`` for every pre-training stage the heads declare."""
        if self.distiller is None:
            return
        for point in self.distiller.points:
            for stage in point.head.stages():
                yield point.name, stage

    def train_batches(self, default: Any) -> Any:
        """The batches to train on: ``default`` (the training split) unless the algorithm makes
        its own, as data-free distillation does. The result needs ``epoch(epoch, start_step)``
        yielding :class:`Batch` es and ``len()`` (batches per epoch)."""
        return default

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def parameter_groups(self) -> list[dict[str, Any]]:
        """The trainable parameters as optimizer groups, ``{"params": [...], "lr_scale": s}``:
        ``lr_scale`` (default 1) multiplies the configured learning rate and follows the same
        schedule. Override to give part of the model its own rate (MEAL V2's discriminator);
        every trainable parameter must be in exactly one group."""
        return [{"params": self.trainable_parameters()}]

    def remove_taps(self) -> None:
        self.student_taps.remove()
        if self.distiller is not None:
            self.distiller.remove_taps()
