"""Wide ResNets (Zagoruyko & Komodakis) for 32x32 inputs, as sized in the KD literature.

``wrn_D_K`` has depth ``D`` = 6n+4 (``n`` pre-activation blocks per stage) and widen factor ``K``:
a 16-channel stem, then stage widths 16K/32K/64K with strides 1, 2, 2, a final BN + ReLU, global
pooling and one linear layer.

Module paths, for distill points:

- ``conv1``: the stem conv (no BN/ReLU after it: blocks are pre-activation).
- ``layer1``, ``layer2``, ``layer3``: the stages. Their outputs are residual sums, *before* any BN.
- ``layerK.i``: block ``i`` of stage ``K`` with ``bn1``, ``relu1``, ``conv1``, ``bn2``, ``relu2``,
  ``dropout``, ``conv2`` and ``shortcut`` (``nn.Identity`` or a 1x1 conv).
- ``bn_final``, ``relu``: the BN + ReLU after ``layer3``; ``avgpool`` (C,1,1), ``embedding`` (flat
  penultimate feature), ``fc`` (logits).

Pre-ReLU (BN-ed) features, the ones OFD and AB distill: the end of stage 1 is ``layer2.0.relu1``
io=input, the end of stage 2 is ``layer3.0.relu1`` io=input, and the end of stage 3 is ``relu``
io=input (equivalently the outputs of ``layer2.0.bn1``, ``layer3.0.bn1`` and ``bn_final``).
All ReLUs are separate, non-inplace ``nn.ReLU`` modules.
"""

from __future__ import annotations

import torch
from torch import nn

from .init import kaiming_init


class PreActBlock(nn.Module):
    """BN-ReLU-conv twice, plus an identity or 1x1-conv shortcut taken from the raw input.

    As in the reference WRN, when the width changes the shortcut sees the BN-ReLU'd input.
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1,
                 drop_rate: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        self.dropout = nn.Dropout(drop_rate)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.equal_in_out = in_planes == planes and stride == 1
        if self.equal_in_out:
            self.shortcut: nn.Module = nn.Identity()
        else:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = self.relu1(self.bn1(x))
        out = self.conv1(activated)
        out = self.conv2(self.dropout(self.relu2(self.bn2(out))))
        return out + self.shortcut(x if self.equal_in_out else activated)


class WideResNet(nn.Module):
    """WRN-depth-widen_factor: three stages of pre-activation blocks.

    :param depth: ``6n + 4``.
    :param widen_factor: multiplies the stage widths 16/32/64.
    :param drop_rate: dropout between the two convs of each block (0 in the KD benchmarks).
    """

    def __init__(self, depth: int = 16, widen_factor: int = 1, num_classes: int = 100,
                 in_channels: int = 3, drop_rate: float = 0.0) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6 != 0:
            raise ValueError(f"WRN depth must be 6n+4 with n >= 1 (10, 16, 22, 28, 40 ...), "
                             f"got {depth}")
        if widen_factor < 1:
            raise ValueError(f"widen_factor must be >= 1, got {widen_factor}")
        blocks = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        in_planes = widths[0]
        for k, (planes, stride) in enumerate(zip(widths[1:], (1, 2, 2)), start=1):
            layer = []
            for i in range(blocks):
                layer.append(PreActBlock(in_planes, planes, stride if i == 0 else 1, drop_rate))
                in_planes = planes
            self.add_module(f"layer{k}", nn.Sequential(*layer))
        self.bn_final = nn.BatchNorm2d(in_planes)
        self.relu = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.embedding = nn.Flatten()
        self.fc = nn.Linear(in_planes, num_classes)
        kaiming_init(self, zero_linear_bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        x = self.relu(self.bn_final(x))
        return self.fc(self.embedding(self.avgpool(x)))


def wide_resnet(depth: int = 16, widen_factor: int = 1, num_classes: int = 100,
                in_channels: int = 3, drop_rate: float = 0.0) -> WideResNet:
    """Any WRN: ``depth`` = 6n+4, ``widen_factor`` >= 1."""
    return WideResNet(depth, widen_factor, num_classes, in_channels, drop_rate)


def wrn_16_1(num_classes: int = 100, in_channels: int = 3) -> WideResNet:
    """WRN-16-1 (0.18M parameters for 100 classes)."""
    return WideResNet(16, 1, num_classes, in_channels)


def wrn_16_2(num_classes: int = 100, in_channels: int = 3) -> WideResNet:
    """WRN-16-2 (0.70M), a common CIFAR-100 KD student."""
    return WideResNet(16, 2, num_classes, in_channels)


def wrn_40_1(num_classes: int = 100, in_channels: int = 3) -> WideResNet:
    """WRN-40-1 (0.57M), a common CIFAR-100 KD student."""
    return WideResNet(40, 1, num_classes, in_channels)


def wrn_40_2(num_classes: int = 100, in_channels: int = 3) -> WideResNet:
    """WRN-40-2 (2.26M), a common CIFAR-100 KD teacher."""
    return WideResNet(40, 2, num_classes, in_channels)
