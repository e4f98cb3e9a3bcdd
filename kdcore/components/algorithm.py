"""Base class of algorithms: what one training step computes."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import attrs
import torch
from torch import nn

from ..taps import FeatureTaps
from .distiller import Distiller
from .pretraining import PreTraining


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
    *what* is minimised. ``student`` is what gets evaluated and exported. An algorithm that must
    say *how* as well (several optimizers, updates in turns) overrides :meth:`optimizers` and
    :meth:`optimization_step` instead of :meth:`training_step`.

    :param student: the network being trained.
    :param task: scores the student's outputs (its own loss and the metric).
    :param distiller: the teachers and distillation heads, or ``None`` for plain training.

    The engine folds the frozen teachers' BatchNorms into their convolutions
    (``trainer.teacher_fold_bn``, kdcore/engine/frozen.py) after the algorithm is built, except
    where a hook is on them: an algorithm that reads the teachers' BatchNorm layers while it
    trains registers its hooks when it is built (data-free inversion does).
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "fold_teacher_batchnorm" in vars(cls):  # still read by the run (speed_up) in 0.1.9
            warnings.warn(f"{cls.__qualname__}.fold_teacher_batchnorm is deprecated and goes after "
                          f"kdcore 0.1.9: a teacher BatchNorm that carries a hook is never folded, "
                          f"so register the hooks when the algorithm is built", DeprecationWarning,
                          stacklevel=2)

    #: False for a method that learns without frozen teachers (Deep Mutual Learning, Be Your Own
    #: Teacher): the core then refuses a config that gives it teachers, naming the key
    #: ``teachers`` in one line (exit code 2), before any teacher is trained. Declared on the
    #: class, because the check runs before the algorithm is built::
    #:
    #:     class MutualLearning(kdcore.Algorithm):
    #:         takes_teachers = False
    takes_teachers: ClassVar[bool] = True

    def __init__(self, student: nn.Module, task: Any, distiller: Distiller | None = None) -> None:
        super().__init__()
        self.student = student
        self.task = task
        self.distiller = distiller
        taps = distiller.student_taps() if distiller is not None else []
        self.student_taps = FeatureTaps(student, taps, where="student module path")

    def training_step(self, batch: Batch, *, epoch: int, step: int) -> dict[str, torch.Tensor]:
        """The loss terms of one batch, ``{name: scalar tensor}``; the engine sums them,
        backpropagates once and steps its one optimizer. Not called when :meth:`optimizers`
        returns a dict (:meth:`optimization_step` is called instead)."""
        raise NotImplementedError

    def optimizers(self, build: Callable[[list[dict[str, Any]]], torch.optim.Optimizer]
                   ) -> dict[str, torch.optim.Optimizer] | None:
        """The optimizers of an algorithm that owns its optimisation step, by name; ``None``
        (the default) when the engine's one optimizer and one backward per batch will do.

        Why: some methods update parts of the model in turns, each on its own loss with its own
        optimizer (Deep Mutual Learning's students, a GAN-style generator and its student). One
        summed backward cannot express that: the second update must see the first one's weights.

        :param build: ``build(groups)`` returns an optimizer of the configured kind, learning
            rate and weight decay (``optimizer:`` in the config) over ``groups``, in the format of
            :meth:`parameter_groups` (``{"params": [...], "lr_scale": s}``, ``lr_scale``
            optional). Use it rather than ``torch.optim`` so the config still chooses the
            optimizer, and the engine gives each one the configured schedule.
        :returns: ``None`` for the default path (one optimizer over :meth:`parameter_groups`,
            :meth:`training_step` every batch), or ``{name: optimizer}``: the engine then calls
            :meth:`optimization_step` every batch, steps each optimizer's scheduler once per
            batch and saves every optimizer in ``last.pt`` under its name. Every trainable
            parameter must be in exactly one optimizer.

        Called once by the run, after the algorithm is built and moved to its device.

        Example, one optimizer per network::

            def optimizers(self, build):
                return {"student": build([{"params": list(self.student.parameters())}]),
                        "peer": build([{"params": list(self.peer.parameters())}])}
        """
        return None

    def optimization_step(self, batch: Batch, *, epoch: int, step: int,
                          update: Callable[[torch.Tensor, str], bool]) -> dict[str, torch.Tensor]:
        """One batch of an algorithm that owns its optimisation step (:meth:`optimizers`
        returned a dict): run the forward passes and call ``update`` for each update.

        Why: the algorithm decides the order of the updates and what each one sees (recompute
        a prediction after a network has moved), while the engine keeps what every update needs
        and no algorithm should rewrite: the finite-loss check (``trainer.on_nonfinite``),
        zeroing, backward (scaled under fp16), gradient clipping, averaging gradients across
        DDP processes (an own-step algorithm is not wrapped in DDP) and the optimizer step.

        :param batch: the training batch, on the run's device.
        :param epoch: 0-based epoch; ``step``: global step (batches since the run started).
        :param update: ``update(loss, name)`` backpropagates ``loss`` into the optimizer ``name``
            (a key of :meth:`optimizers`) and steps it; call it once or several times, in any
            order. It returns False when the step was skipped (a non-finite loss under
            ``trainer.on_nonfinite: skip``), True when the optimizer stepped.
        :returns: the loss terms to log, ``{name: scalar}``, detached: they are logged as
            :meth:`training_step`'s are, never backpropagated by the engine.

        Called every batch instead of :meth:`training_step`, in train mode.

        Example, two networks updated in turns::

            def optimization_step(self, batch, *, epoch, step, update):
                loss = self.task.loss(self.student(batch.inputs), batch.targets)
                update(loss, "student")
                with torch.no_grad():
                    target = self.student(batch.inputs)  # after the student's update
                peer = self.peer(batch.inputs)
                mimic = F.kl_div(F.log_softmax(peer, 1), F.softmax(target, 1), reduction="batchmean")
                update(mimic, "peer")
                return {"student": loss.detach(), "peer": mimic.detach()}
        """
        raise NotImplementedError(f"{type(self).__name__}.optimizers() returned optimizers, so it "
                                  f"must implement optimization_step()")

    def student_forward(self, inputs: torch.Tensor) -> tuple[Any, dict[str, Any]]:
        """Run the student; return its output and the tapped features."""
        return self.student_taps.run(self.student, inputs)

    def evaluation_models(self) -> dict[str, nn.Module]:
        """The networks scored after each epoch, by name. The first is the one exported."""
        return {"student": self.student}

    def stages(self) -> Iterator[tuple[str, PreTraining]]:
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
