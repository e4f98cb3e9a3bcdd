"""A pre-training step that a method declares and ``kdcore run`` performs before training.

FitNets pre-trains the student's lower layers on the hint, AB initialises the student and its
connector on the activation-boundary loss, Factor Transfer trains the paraphraser to reconstruct
the teacher feature. A loss or connector returns them from ``stages(head)``; the run trains each
through the same loop as main training (:func:`kdcore.engine.loop.run_stage`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import attrs
import torch


@attrs.define
class PreTraining:
    """One pre-training step, trained by its own optimizer before main training starts.

    (Called ``Stage`` before kdcore 0.2: "stage" also names a model's blocks, ``stage2``.)

    :param name: shown in the progress bar and in the log line of the pre-training's losses.
    :param epochs: passes over the training data; 0 skips it.
    :param loss: ``loss(student_feature, teacher_feature, **extra) -> scalar`` on the raw tapped
        features of the head that declared it.
    :param parameters: what it trains. ``None`` means the student plus the head's connectors
        (the usual "initialise the student on the distillation loss").
    :param needs_student: ``False`` when it only looks at teacher features (no student forward
        pass is run then).
    :param lr: learning rate of its own optimizer.
    :param optimizer: ``sgd`` (momentum 0.9) or ``adam``.
    """

    name: str
    epochs: int
    loss: Callable[..., torch.Tensor]
    parameters: Callable[[], Iterable[torch.nn.Parameter]] | None = None
    needs_student: bool = True
    lr: float = 0.01
    optimizer: str = "sgd"
