"""CIFAR ResNets as sized in the KD literature (CRD / RepDistiller benchmarks).

``resnetN`` has ``(N - 2) / 6`` basic blocks per stage and stage widths 16/32/64 after a 16-channel
stem; the ``x4`` variants (``resnet8x4``, ``resnet32x4``) use a 32-channel stem and widths
64/128/256. Global average pooling makes any input size work; on 32x32 inputs the three stages
give 32x32, 16x16 and 8x8 maps.

Module paths, for distill points:

- ``conv1``, ``bn1``, ``relu``: the stem (``relu`` io=input is the pre-ReLU stem feature).
- ``layer1``, ``layer2``, ``layer3``: the stages; their output is post-ReLU.
- ``layerK.i``: block ``i`` of stage ``K`` with ``conv1``, ``bn1``, ``relu1``, ``conv2``, ``bn2``,
  ``downsample`` (``nn.Identity`` or 1x1 conv + BN) and ``out_relu``. ``layerK.i.out_relu`` with
  io=input is the block's pre-ReLU output (residual sum), the feature OFD and AB distill; its
  output equals the block's output.
- ``avgpool`` (C,1,1), ``embedding`` (the flat penultimate feature), ``fc`` (logits).

All ReLUs are separate, non-inplace ``nn.ReLU`` modules so every pre-activation is addressable.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .init import kaiming_init


class BasicBlock(nn.Module):
    """Two 3x3 convs with BN, plus a shortcut; the final ReLU is the ``out_relu`` module."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        if stride != 1 or in_planes != planes:
            self.downsample: nn.Module = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes))
        else:
            self.downsample = nn.Identity()
        self.out_relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.out_relu(out + self.downsample(x))


class CifarResNet(nn.Module):
    """Stem, three stages of basic blocks (strides 1, 2, 2), global pooling, one linear layer.

    :param depth: ``6n + 2`` total layers, i.e. ``n`` blocks per stage.
    :param widths: stem width followed by the three stage widths.
    """

    def __init__(self, depth: int = 20, widths: Sequence[int] = (16, 16, 32, 64),
                 num_classes: int = 100, in_channels: int = 3) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 with n >= 1 (8, 14, 20 ...), "
                             f"got {depth}")
        if len(widths) != 4:
            raise ValueError(f"widths must be 4 numbers (stem and three stages), "
                             f"got {list(widths)}")
        blocks = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        in_planes = widths[0]
        for k, (planes, stride) in enumerate(zip(widths[1:], (1, 2, 2)), start=1):
            layer = []
            for i in range(blocks):
                layer.append(BasicBlock(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
            self.add_module(f"layer{k}", nn.Sequential(*layer))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.embedding = nn.Flatten()
        self.fc = nn.Linear(in_planes, num_classes)
        kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.embedding(self.avgpool(x)))


_BASE = (16, 16, 32, 64)
_X4 = (32, 64, 128, 256)


def cifar_resnet(depth: int = 20, widths: Sequence[int] = _BASE, num_classes: int = 100,
                 in_channels: int = 3) -> CifarResNet:
    """Any CIFAR ResNet: ``depth`` = 6n+2, ``widths`` = stem and three stage widths."""
    return CifarResNet(depth, tuple(widths), num_classes, in_channels)


def resnet8(num_classes: int = 100, in_channels: int = 3) -> CifarResNet:
    """ResNet-8, widths 16/32/64 (0.08M parameters for 100 classes)."""
    return CifarResNet(8, _BASE, num_classes, in_channels)


def resnet14(num_classes: int = 100, in_channels: int = 3) -> CifarResNet:
    """ResNet-14, widths 16/32/64 (0.18M)."""
    return CifarResNet(14, _BASE, num_classes, in_channels)


def resnet20(num_classes: int = 100, in_channels: int = 3) -> CifarResNet:
    """ResNet-20, widths 16/32/64 (0.28M)."""
    return CifarResNet(20, _BASE, num_classes, in_channels)


def resnet32(num_classes: int = 100, in_channels: int = 3) -> CifarResNet:
    """ResNet-32, widths 16/32/64 (0.47M)."""
    return CifarResNet(32, _BASE, num_classes, in_channels)


def resnet44(num_classes: int = 100, in_channels: int = 3) -> CifarResNet:
    """ResNet-44, widths 16/32/64 (0.67M)."""
    return CifarResNet(44, _BASE, num_classes, in_channels)


def resnet56(num_classes: int = 100, in_channels: int = 3) -> CifarResNet:
    """ResNet-56, widths 16/32/64 (0.86M)."""
    return CifarResNet(56, _BASE, num_classes, in_channels)


def resnet110(num_classes: int = 100, in_channels: int = 3) -> CifarResNet:
    """ResNet-110, widths 16/32/64 (1.74M)."""
    return CifarResNet(110, _BASE, num_classes, in_channels)


def resnet8x4(num_classes: int = 100, in_channels: int = 3) -> CifarResNet:
    """ResNet-8x4: stem 32, widths 64/128/256 (1.23M), the usual CIFAR-100 KD student."""
    return CifarResNet(8, _X4, num_classes, in_channels)


def resnet32x4(num_classes: int = 100, in_channels: int = 3) -> CifarResNet:
    """ResNet-32x4: stem 32, widths 64/128/256 (7.43M), the usual CIFAR-100 KD teacher."""
    return CifarResNet(32, _X4, num_classes, in_channels)
