"""Small CNNs sized for 28x28 inputs (Fashion-MNIST, MNIST): fast on a CPU.

Module paths, for distill points: ``stage1``..``stageN`` (each ``conv``, ``bn``, ``relu`` and,
for all but the last stage, ``pool``), ``pool`` (global average), ``embedding`` (the flat
penultimate feature) and ``fc`` (logits). The input of ``stageK.relu`` (equivalently the output
of ``stageK.bn``) is the pre-activation feature that OFD and AB use.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from .init import kaiming_init


class ConvStage(nn.Sequential):
    """``depth`` x (3x3 conv, BN, ReLU), then optional 2x2 max pooling."""

    def __init__(self, in_channels: int, out_channels: int, pool: bool, depth: int = 1) -> None:
        layers: list[tuple[str, nn.Module]] = []
        for i in range(depth):
            suffix = "" if i == depth - 1 else str(i)
            layers += [
                (f"conv{suffix}", nn.Conv2d(in_channels if i == 0 else out_channels, out_channels,
                                            3, padding=1, bias=False)),
                (f"bn{suffix}", nn.BatchNorm2d(out_channels)),
                (f"relu{suffix}", nn.ReLU()),
            ]
        if pool:
            layers.append(("pool", nn.MaxPool2d(2)))
        super().__init__(OrderedDict(layers))


class SmallCNN(nn.Module):
    """Stages of 3x3 convs with max pooling between them, global pooling, one linear layer.

    :param widths: channels per stage; every stage but the last halves the resolution.
    :param depth: conv layers per stage.
    """

    def __init__(self, widths: Sequence[int] = (16, 32, 64), depth: int = 1,
                 num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        channels = [in_channels, *widths]
        for i in range(len(widths)):
            self.add_module(f"stage{i + 1}", ConvStage(channels[i], channels[i + 1],
                                                       pool=i < len(widths) - 1, depth=depth))
        self.num_stages = len(widths)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.embedding = nn.Flatten()
        self.fc = nn.Linear(widths[-1], num_classes)
        kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(self.num_stages):
            x = getattr(self, f"stage{i + 1}")(x)
        return self.fc(self.embedding(self.pool(x)))


def cnn_teacher(num_classes: int = 10, in_channels: int = 1) -> SmallCNN:
    """The default Fashion-MNIST teacher: widths 24/48/96 (53k parameters)."""
    return SmallCNN((24, 48, 96), depth=1, num_classes=num_classes, in_channels=in_channels)


def cnn_student(num_classes: int = 10, in_channels: int = 1) -> SmallCNN:
    """The default Fashion-MNIST student: widths 8/16/32 (6.3k parameters)."""
    return SmallCNN((8, 16, 32), depth=1, num_classes=num_classes, in_channels=in_channels)
