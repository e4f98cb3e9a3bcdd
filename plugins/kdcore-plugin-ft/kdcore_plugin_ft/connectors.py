"""Factor Transfer's two connectors.

The *paraphraser* sits on the teacher side: an encoder (three 3x3 convs with LeakyReLU(0.1))
that squeezes the teacher feature to ``int(rate * C_t)`` channels, the "teacher factor", and a
decoder (three transposed convs) used only to pre-train the encoder by reconstruction. It
declares that pre-training as a :class:`kdcore.PreTraining`; in main training it is a fixed map.

The *translator* sits on the student side: three 3x3 convs that bring the student feature to
the same factor shape. Both sides must agree on the factor channels, so the translator derives
them from the teacher's channels with the same ``rate`` (keep the two ``rate`` values equal) or
takes ``factor_channels`` explicitly.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

import kdcore

if TYPE_CHECKING:
    from kdcore import DistillationHead

#: slope of the LeakyReLU between convs, as in the paper's code.
LEAKY_SLOPE = 0.1
RECONSTRUCTIONS = ("l1", "mse")


def factor_channels_for(teacher_channels: int, rate: float) -> int:
    """Channels of the teacher factor: ``int(rate * C_t)`` (truncated, as the reference does)."""
    if rate <= 0:
        raise ValueError(f"rate must be > 0, got {rate}")
    channels = int(teacher_channels * rate)
    if channels < 1:
        raise ValueError(f"rate {rate} leaves no factor channels for a {teacher_channels}-channel "
                         f"teacher feature; raise rate")
    return channels


def _check_map(shape: tuple[int, ...], who: str) -> None:
    if len(shape) != 3:
        raise kdcore.UserError(f"{who} needs a (C, H, W) feature map, got per-sample shape "
                               f"{tuple(shape)}; tap a convolutional stage")


def _conv_stack(channels: list[int], bn: bool, transposed: bool = False,
                last_activation: bool = True) -> nn.Sequential:
    """3x3 (transposed) convs, same spatial size, through ``channels``, LeakyReLU in between."""
    conv = nn.ConvTranspose2d if transposed else nn.Conv2d
    layers: list[nn.Module] = []
    pairs = list(zip(channels[:-1], channels[1:]))
    for i, (cin, cout) in enumerate(pairs):
        layers.append(conv(cin, cout, kernel_size=3, stride=1, padding=1, bias=not bn))
        if bn:
            layers.append(nn.BatchNorm2d(cout))
        if last_activation or i < len(pairs) - 1:
            layers.append(nn.LeakyReLU(LEAKY_SLOPE))
    return nn.Sequential(*layers)


class Paraphraser(kdcore.Connector):
    """Teacher connector: returns the teacher factor ``encoder(F_t)``, always without autograd.

    Freezing: the paraphraser is created frozen (``requires_grad=False``) so main-training
    optimizers never pick it up. Its stage unfreezes it (when the stage asks for its parameters
    and on every reconstruction step); the first ordinary ``forward`` after that, i.e. the first
    main-training step, freezes it again and drops its stale gradients. ``forward`` runs the
    encoder under ``torch.no_grad()`` in any case, so the factor is a constant target and the
    weights cannot move in main training whatever the optimizer holds. There is no BatchNorm
    in it, so train/eval mode does not change the factor.

    :param in_shape: per-sample teacher feature shape ``(C_t, H, W)`` (context).
    :param rate: paraphrase rate ``k``: factor channels = ``int(k * C_t)``.
    :param pretrain_epochs: epochs of the reconstruction stage (0 skips it, leaving a random,
        frozen encoder).
    :param pretrain_lr: learning rate of the stage (SGD, momentum 0.9).
    :param reconstruction: ``"mse"`` (RepDistiller, torchdistill; default) or ``"l1"`` (the
        paper's code) between the decoder output and the teacher feature, element mean. On a
        sparse post-ReLU feature L1 sits at the all-zero reconstruction (its element-wise
        median) for many steps, so a short stage gets nothing from it; MSE moves at once.
    """

    def __init__(self, in_shape: tuple[int, ...], rate: float = 0.5, pretrain_epochs: int = 1,
                 pretrain_lr: float = 0.1, reconstruction: str = "mse") -> None:
        super().__init__()
        _check_map(in_shape, "paraphraser")
        if reconstruction not in RECONSTRUCTIONS:
            raise ValueError(f"reconstruction must be one of {', '.join(RECONSTRUCTIONS)}, "
                             f"got {reconstruction!r}")
        if pretrain_epochs < 0:
            raise ValueError(f"pretrain_epochs must be >= 0, got {pretrain_epochs}")
        channels = int(in_shape[0])
        self.factor_channels = factor_channels_for(channels, rate)
        self.pretrain_epochs = int(pretrain_epochs)
        self.pretrain_lr = float(pretrain_lr)
        self.reconstruction = reconstruction
        self.encoder = _conv_stack([channels, channels, self.factor_channels,
                                    self.factor_channels], bn=False)
        self.decoder = _conv_stack([self.factor_channels, self.factor_channels, channels,
                                    channels], bn=False, transposed=True, last_activation=False)
        self.frozen = False
        self.set_frozen(True)

    def set_frozen(self, frozen: bool) -> None:
        """Switch ``requires_grad`` of every weight; freezing also drops stale gradients."""
        for p in self.parameters():
            p.requires_grad_(not frozen)
            if frozen:
                p.grad = None
        self.frozen = frozen

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.frozen:
            self.set_frozen(True)
        with torch.no_grad():
            return self.encoder(x)

    def reconstruction_loss(self, teacher: torch.Tensor) -> torch.Tensor:
        """Reconstruction error of ``decoder(encoder(teacher))``: what the stage minimises."""
        if self.frozen:
            self.set_frozen(False)
        target = teacher.detach()
        recon = self.decoder(self.encoder(target))
        if self.reconstruction == "l1":
            return F.l1_loss(recon, target)
        return F.mse_loss(recon, target)

    def _stage_parameters(self) -> Iterable[nn.Parameter]:
        self.set_frozen(False)
        return list(self.parameters())

    def stages(self, head: "DistillationHead") -> list[kdcore.PreTraining]:
        if head.teacher_connector is not self:
            raise kdcore.UserError(f"{head.label}: 'paraphraser' is a teacher connector; set it "
                                   f"as teacher_connector and use 'translator' on the student",
                                   key_path=head.label)

        def loss(student: Any, teacher: torch.Tensor, **extra: Any) -> torch.Tensor:
            return self.reconstruction_loss(teacher)

        return [kdcore.PreTraining("ft_paraphraser", self.pretrain_epochs, loss,
                                   parameters=self._stage_parameters, needs_student=False,
                                   lr=self.pretrain_lr)]


class Translator(kdcore.Connector):
    """Student connector: three 3x3 convs (LeakyReLU(0.1)) to the teacher factor's shape.

    :param in_shape: per-sample student feature shape (context).
    :param out_shape: per-sample teacher feature shape, *before* the paraphraser (context); the
        factor channels are ``int(rate * out_shape[0])``, the paraphraser's formula.
    :param rate: must equal the paraphraser's ``rate``.
    :param factor_channels: the factor channels, overriding ``rate`` (use when the teacher-side
        connector is not a paraphraser with that rate).
    :param bn: BatchNorm after each conv (RepDistiller's variant; the paper has none).
    """

    def __init__(self, in_shape: tuple[int, ...], out_shape: tuple[int, ...], rate: float = 0.5,
                 factor_channels: int | None = None, bn: bool = False) -> None:
        super().__init__()
        _check_map(in_shape, "translator")
        _check_map(out_shape, "translator")
        if tuple(in_shape[1:]) != tuple(out_shape[1:]):
            raise kdcore.UserError(
                f"translator keeps the spatial size, but the student feature is "
                f"{tuple(in_shape[1:])} and the teacher feature {tuple(out_shape[1:])}; tap "
                f"layers of equal resolution")
        if factor_channels is None:
            factor_channels = factor_channels_for(int(out_shape[0]), rate)
        elif factor_channels < 1:
            raise ValueError(f"factor_channels must be >= 1, got {factor_channels}")
        self.factor_channels = int(factor_channels)
        channels = int(in_shape[0])
        self.body = _conv_stack([channels, channels, self.factor_channels,
                                 self.factor_channels], bn=bn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)
