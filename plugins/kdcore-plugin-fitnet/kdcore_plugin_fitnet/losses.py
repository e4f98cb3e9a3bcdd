"""The FitNets hint loss (Romero et al., ICLR 2015) and its optional hint pre-training stage."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import torch

import kdcore

if TYPE_CHECKING:
    from kdcore import DistillationHead

Reduction = Literal["mean", "half_sum"]
_REDUCTIONS = ("mean", "half_sum")
_OPTIMIZERS = ("sgd", "adam")


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """Half precision is upcast for the reduction; float64 stays float64."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def hint_loss(student: torch.Tensor, teacher: torch.Tensor, reduction: Reduction = "mean") -> torch.Tensor:
    """Squared error between the regressed hint and the guided feature.

    ``mean``: mean over every element (RepDistiller/mdistiller ``MSE``, used with weight 100).
    ``half_sum``: the paper's ``1/2 ||F_t - r(F_s)||^2`` per sample, averaged over the batch.
    """
    diff2 = (_at_least_fp32(student) - _at_least_fp32(teacher)).pow(2)
    if reduction == "mean":
        return diff2.mean()
    return 0.5 * diff2.flatten(1).sum(1).mean()


def check_same_shape(student: torch.Tensor, teacher: torch.Tensor) -> None:
    if tuple(student.shape) != tuple(teacher.shape):
        raise kdcore.UserError(
            f"fitnet compares features of equal shape, but the student hint is "
            f"{tuple(student.shape[1:])} and the teacher guided feature is "
            f"{tuple(teacher.shape[1:])} (per sample); add student_connector: {{type: conv_reg}}")


class FitNetLoss(kdcore.Loss):
    """Hint loss between ``r(F_s)`` (the student hint after the ``conv_reg`` connector) and
    ``F_t`` (the teacher's guided feature).

    With ``hint_epochs > 0`` it also declares the paper's first stage: the student and the
    head's connectors are trained on the weighted hint term alone before main training.

    :param reduction: ``mean`` (reference code, default) or ``half_sum`` (paper).
    :param hint_epochs: epochs of hint pre-training; 0 (default) skips the stage.
    :param hint_lr: learning rate of the stage's own optimizer.
    :param hint_optimizer: ``sgd`` (momentum 0.9) or ``adam`` (torchdistill's sample uses Adam 1e-3).
    :param keep_hint: keep the hint term in main training (RepDistiller/mdistiller). ``false``
        reproduces the paper: the hint only initialises the student, main training is CE/KD.
    """

    def __init__(self, reduction: Reduction = "mean", hint_epochs: int = 0, hint_lr: float = 0.01,
                 hint_optimizer: str = "sgd", keep_hint: bool = True) -> None:
        super().__init__()
        if reduction not in _REDUCTIONS:
            raise kdcore.UserError(f"fitnet: reduction must be one of {', '.join(_REDUCTIONS)}, "
                                   f"got {reduction!r}")
        if int(hint_epochs) != hint_epochs or hint_epochs < 0:
            raise kdcore.UserError(f"fitnet: hint_epochs must be a whole number >= 0, got {hint_epochs!r}")
        if hint_lr <= 0:
            raise kdcore.UserError(f"fitnet: hint_lr must be > 0, got {hint_lr!r}")
        if hint_optimizer not in _OPTIMIZERS:
            raise kdcore.UserError(f"fitnet: hint_optimizer must be one of {', '.join(_OPTIMIZERS)}, "
                                   f"got {hint_optimizer!r}")
        if not keep_hint and hint_epochs == 0:
            raise kdcore.UserError("fitnet: keep_hint: false with hint_epochs: 0 would never use the "
                                   "hint; set hint_epochs > 0 or keep_hint: true")
        self.reduction: Reduction = reduction
        self.hint_epochs = int(hint_epochs)
        self.hint_lr = float(hint_lr)
        self.hint_optimizer = hint_optimizer
        self.keep_hint = bool(keep_hint)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, **extra: Any) -> torch.Tensor:
        check_same_shape(student, teacher)
        if not self.keep_hint:
            # the hint was only the pre-training target; a zero that still depends on the student
            return _at_least_fp32(student).sum() * 0.0
        return hint_loss(student, teacher, self.reduction)

    def stages(self, head: "DistillationHead") -> list[kdcore.PreTraining]:
        """The hint pre-training stage (student + head connectors on the weighted hint term)."""
        if self.hint_epochs == 0:
            return []
        weight = next((head.weights[name] for name, loss in head.losses.items() if loss is self), 1.0)

        def weighted_hint(student: torch.Tensor, teacher: torch.Tensor, **extra: Any) -> torch.Tensor:
            s, t = head.connect(student, teacher)
            check_same_shape(s, t)
            return weight * hint_loss(s, t, self.reduction)

        return [kdcore.PreTraining("fitnet_hint", self.hint_epochs, weighted_hint, parameters=None,
                                   lr=self.hint_lr, optimizer=self.hint_optimizer)]
