"""Tiny stand-ins the contract classes run components against: seconds on a CPU."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..components import Loss
from ..components.distiller import freeze
from ..data import TensorSplit
from ..models.cnn import SmallCNN

#: per-sample input shape of the tiny models and data (Fashion-MNIST's).
INPUT_SHAPE = (1, 28, 28)
NUM_CLASSES = 10


class MeanSquared(Loss):
    """Mean squared difference; the kit's own loss for heads, distillers and algorithms, so
    those contracts need no loss plugin."""

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, **extra: Any) -> torch.Tensor:
        return (student.float() - teacher.float()).pow(2).mean()


class FrozenSource(nn.Module):
    """A frozen module that produces a teacher feature of ``shape`` from a feature of the same
    shape (a fixed per-element scale, so the values keep their distribution)."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(math.prod(shape)).view(*shape))
        self.bn = nn.BatchNorm1d(1)  # a buffer-carrying layer, to see whether someone trains it
        freeze(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


def tiny_cnn(widths: tuple[int, ...] = (4, 8, 8)) -> SmallCNN:
    """A CNN for 1x28x28 inputs with the default models' module paths (stage1..3, fc...)."""
    return SmallCNN(widths, depth=1, num_classes=NUM_CLASSES, in_channels=INPUT_SHAPE[0])


def random_split(n: int, seed: int = 0) -> TensorSplit:
    """``n`` random 1x28x28 images with random labels."""
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(n, *INPUT_SHAPE, generator=generator)
    targets = torch.randint(0, NUM_CLASSES, (n,), generator=generator)
    return TensorSplit(inputs, targets)


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of every parameter and buffer, to compare after a step."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(before: dict[str, torch.Tensor], module: nn.Module) -> list[str]:
    after = module.state_dict()
    return [k for k, v in before.items() if k in after and not torch.equal(v, after[k])]


@torch.no_grad()
def sgd_step(params: list[nn.Parameter], lr: float) -> None:
    """One plain SGD step (what the engine's optimizer does, without importing torch.optim)."""
    for p in params:
        if p.grad is not None:
            p.add_(p.grad, alpha=-lr)
