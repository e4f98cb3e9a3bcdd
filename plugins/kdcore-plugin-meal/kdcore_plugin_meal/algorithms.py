"""MEAL V2 (Shen & Savvides, 2020) as a kdcore algorithm.

No one-hot labels: the student learns only from the teachers. Per batch

    kl   = kl_weight   * T^2 * KL( mean_k softmax(z_k / T) || softmax(z_s / T) )
    disc = disc_weight * BCE-with-logits( D([z_s ; mean_k z_k]), [0 ; 1] )

summed and minimised in ONE optimizer step over the student and the discriminator ``D``, as in
the reference code. What the student does with ``disc`` is the ``student_disc_grad`` knob:
``same`` (the reference: the student also descends ``disc``, there is no gradient reversal),
``reverse`` (a gradient-reversal layer: the student ascends ``disc``, i.e. tries to fool ``D``,
the usual adversarial reading of the paper) or ``none`` (``D`` sees detached student logits).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import kdcore

from .discriminator import Discriminator, scale_grad

_GRAD_MODES = ("same", "reverse", "none")


def ensemble_kl(student_logits: torch.Tensor, teacher_logits: Sequence[torch.Tensor],
                temperature: float = 1.0) -> torch.Tensor:
    """``T^2 * KL(mean_k softmax(z_k/T) || softmax(z_s/T))``, summed over classes, batch mean.

    Equals the reference's soft cross-entropy minus the (constant) entropy of the target, so
    it has the same gradient and is 0 when the student matches the ensemble.
    """
    t = temperature
    target = torch.stack([F.softmax(z.float() / t, dim=1) for z in teacher_logits]).mean(0)
    log_student = F.log_softmax(student_logits.float() / t, dim=1)
    kl = F.kl_div(log_student, target, reduction="batchmean")
    return kl * (t * t)


class MealV2(kdcore.Algorithm):
    """The student learns the teacher ensemble's averaged soft labels; a discriminator on
    logits tells student logits (label 0) from the averaged teacher logits (label 1).

    :param temperature: softening of the soft labels (reference: 1).
    :param kl_weight: weight of the KL to the ensemble's soft labels.
    :param disc_weight: weight of the discriminator's BCE (reference: 1).
    :param disc_hidden: hidden widths of the discriminator MLP (``num_classes -> ... -> 1``).
    :param disc_lr_scale: the discriminator's learning rate relative to the student's (its own
        optimizer parameter group, any optimizer, same schedule). Reference: 1 in effect (its
        nominal discriminator lr 1e-4 is overwritten by the student's lr at every epoch start).
    :param student_disc_grad: ``same`` (reference), ``reverse`` or ``none``; see the module doc.
    """

    def __init__(self, student: nn.Module, task: Any, distiller: kdcore.Distiller | None = None, *,
                 num_classes: int, temperature: float = 1.0, kl_weight: float = 1.0,
                 disc_weight: float = 1.0, disc_hidden: Sequence[int] = (64, 16),
                 disc_lr_scale: float = 1.0, student_disc_grad: str = "same") -> None:
        if distiller is None or not len(distiller.teachers):
            raise kdcore.UserError("algorithm 'meal_v2' learns from teachers only; add at least one "
                                   "under 'teachers:' (distill points are optional)",
                                   key_path="algorithm")
        if temperature <= 0:
            raise kdcore.UserError(f"algorithm.temperature: must be > 0, got {temperature}",
                                   key_path="algorithm.temperature")
        if student_disc_grad not in _GRAD_MODES:
            raise kdcore.UserError(f"algorithm.student_disc_grad: {student_disc_grad!r} is not one of "
                                   f"{', '.join(_GRAD_MODES)}",
                                   key_path="algorithm.student_disc_grad")
        if disc_lr_scale < 0:
            raise kdcore.UserError(f"algorithm.disc_lr_scale: must be >= 0, got {disc_lr_scale}",
                                   key_path="algorithm.disc_lr_scale")
        super().__init__(student, task, distiller)
        self.temperature = float(temperature)
        self.kl_weight, self.disc_weight = float(kl_weight), float(disc_weight)
        self.student_disc_grad = student_disc_grad
        self.disc_lr_scale = float(disc_lr_scale)
        self.discriminator = Discriminator(num_classes, list(disc_hidden))

    def parameter_groups(self) -> list[dict[str, Any]]:
        """The discriminator trains at ``disc_lr_scale`` x the configured learning rate."""
        disc = {id(p) for p in self.discriminator.parameters()}
        rest = [p for p in self.trainable_parameters() if id(p) not in disc]
        return [{"params": rest},
                {"params": [p for p in self.discriminator.parameters() if p.requires_grad],
                 "lr_scale": self.disc_lr_scale}]

    def disc_loss(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        """BCE-with-logits of ``D`` on student logits (target 0) and teacher logits (target 1),
        averaged over both halves."""
        if self.student_disc_grad == "none":
            student_logits = student_logits.detach()
        elif self.student_disc_grad == "reverse":
            student_logits = scale_grad(student_logits, -1.0)
        inputs = torch.cat([student_logits.float(), teacher_logits.float().detach()])
        labels = torch.cat([torch.zeros(len(student_logits)), torch.ones(len(teacher_logits))])
        return F.binary_cross_entropy_with_logits(self.discriminator(inputs), labels.to(inputs.device))

    def training_step(self, batch: kdcore.Batch, *, epoch: int, step: int) -> dict[str, torch.Tensor]:
        assert self.distiller is not None
        outputs, student_features = self.student_forward(batch.inputs)
        teacher_features = self.distiller.teacher_features(batch.inputs, indices=batch.indices)
        teacher_logits = [f["output"] for f in teacher_features.values()]
        terms: dict[str, torch.Tensor] = {}
        if self.kl_weight:
            terms["kl"] = self.kl_weight * ensemble_kl(outputs, teacher_logits, self.temperature)
        if self.disc_weight:
            mean_logits = torch.stack([z.float() for z in teacher_logits]).mean(0)
            terms["disc"] = self.disc_weight * self.disc_loss(outputs, mean_logits)
        if self.distiller.points:  # optional extra distill points (feature losses ...)
            terms.update(self.distiller.losses(student_features, teacher_features, targets=batch.targets,
                                               indices=batch.indices, epoch=epoch, step=step))
        return terms
