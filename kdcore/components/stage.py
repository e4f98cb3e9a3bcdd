"""A pre-training stage that a method declares and ``kdcore run`` performs before training.

FitNets pre-trains the student's lower layers on the hint, AB initialises the student and its
connector on the activation-boundary loss, Factor Transfer trains the paraphraser to reconstruct
the teacher feature. A loss or connector returns such stages from ``stages(head)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import attrs
import torch


@attrs.define
class Stage:
    """One pre-training stage.

    :param name: shown in the progress bar and in the log line of the stage's losses.
    :param epochs: passes over the training data; 0 skips the stage.
    :param loss: ``loss(student_feature, teacher_feature, **extra) -> scalar`` on the raw tapped
        features of the head that declared the stage.
    :param parameters: what the stage trains. ``None`` means the student plus the head's
        connectors (the usual "initialise the student on the distillation loss").
    :param needs_student: ``False`` when the stage only looks at teacher features (no student
        forward pass is run then).
    :param lr: learning rate of the stage's own optimizer (SGD, momentum 0.9).
    """

    name: str
    epochs: int
    loss: Callable[..., torch.Tensor]
    parameters: Callable[[], Iterable[torch.nn.Parameter]] | None = None
    needs_student: bool = True
    lr: float = 0.01
    optimizer: str = "sgd"
