"""The logit discriminator of MEAL V2 and the gradient plumbing around it.

The reference discriminator is three 1x1 convolutions on a 1x1 map (1000 -> 125 -> 15 -> 2 for
ImageNet, channels divided by K = 8 per layer). A 1x1 convolution on a 1x1 map is a linear
layer, so linear layers are used here; the widths are configurable because dividing 10 classes
by 8 would leave no hidden units.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn


class Discriminator(nn.Module):
    """``num_classes -> hidden[0] -> ... -> 1``: linear layers with ReLU between, one logit
    ("these logits come from the teachers") per sample.

    The reference also applies a ReLU to its two output logits; here the last layer is linear so
    the logit can take either sign (a ReLU there would forbid predicting "student" below 0.5
    for the one-logit form).
    """

    def __init__(self, num_classes: int, hidden: Sequence[int] = (64, 16)) -> None:
        super().__init__()
        widths = [num_classes, *hidden]
        layers: list[nn.Module] = []
        for a, b in itertools.pairwise(widths):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers.append(nn.Linear(widths[-1], 1))
        self.net = nn.Sequential(*layers)

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return self.net(logits).squeeze(1)


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; multiplies the incoming gradient by ``scale`` (``-1``: reversal)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * ctx.scale, None


def scale_grad(x: torch.Tensor, scale: float) -> torch.Tensor:
    """``x`` unchanged, with its gradient multiplied by ``scale`` on the way back."""
    return _ScaleGrad.apply(x, scale)
