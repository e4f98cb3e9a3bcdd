"""Built-in connectors: identity, linear, 1x1 conv + BN."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..components import Connector
from ..errors import UserError
from ..hookspecs import hookimpl
from ..specs import Component


class Identity(Connector):
    """Passes the feature through unchanged."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class LinearConnector(Connector):
    """Flattens the feature and maps it with one linear layer to the other side's size."""

    def __init__(self, in_shape: tuple[int, ...], out_shape: tuple[int, ...], bias: bool = True) -> None:
        super().__init__()
        self.out_shape = tuple(out_shape)
        self.fc = nn.Linear(math.prod(in_shape), math.prod(out_shape), bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1)).view(x.shape[0], *self.out_shape)


class Conv1x1BN(Connector):
    """1x1 convolution and BatchNorm mapping channels; spatial size must already agree."""

    def __init__(self, in_shape: tuple[int, ...], out_shape: tuple[int, ...], bn: bool = True) -> None:
        super().__init__()
        if len(in_shape) != 3 or len(out_shape) != 3:
            raise UserError(f"conv1x1_bn needs (C, H, W) features on both sides, got {tuple(in_shape)} "
                            f"and {tuple(out_shape)}; use {{type: linear}} for flat features")
        if tuple(in_shape[1:]) != tuple(out_shape[1:]):
            raise UserError(f"conv1x1_bn keeps the spatial size, but it is {tuple(in_shape[1:])} on "
                            f"one side and {tuple(out_shape[1:])} on the other; tap layers of equal "
                            f"resolution")
        self.conv = nn.Conv2d(in_shape[0], out_shape[0], kernel_size=1, bias=False)
        self.bn = nn.BatchNorm2d(out_shape[0]) if bn else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


@hookimpl
def kdcore_connectors() -> list[Component]:
    return [
        Component("identity", Identity, "pass the feature through unchanged"),
        Component("linear", LinearConnector, "flatten and map with one linear layer"),
        Component("conv1x1_bn", Conv1x1BN, "1x1 conv + BatchNorm to match channels"),
    ]
