"""A small one-stage grid detector in the YOLOv2 mould, sized for 64x64 scenes on a CPU.

Module paths, for distill points (``kdcore inspect yolo_teacher --dataset fashion_scenes``):

- ``backbone.stage1`` .. ``backbone.stageN``: each halves the resolution (a strided 3x3 conv,
  then ``depth - 1`` more 3x3 convs; BN and LeakyReLU 0.1 after each);
- ``neck``: YOLOv2's passthrough: the last stage concatenated with the one before it, squeezed
  (1x1 conv) and folded to the same grid (space-to-depth, 2x2 -> channels), mixed by a 3x3 and
  a 1x1 conv; the features feature imitation (FitNets, CWD) taps;
- ``head``: a 1x1 conv giving ``num_anchors x (5 + classes)`` channels per grid cell, returned
  as ``(N, num_anchors, 5 + classes, H, W)``: the raw head output that the detection task
  decodes and that output distillation (``yolo_kd``) taps. It is also the model's output.

With three stages a 64x64 input gives an 8x8 grid (cells of 8 pixels). Anchors are the task's
(``data.anchors``); the model only needs their number. The objectness bias starts at
``log(0.01 / 0.99)`` (RetinaNet's prior), so the first steps are not swamped by the background.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from .init import kaiming_init


def conv_bn(in_channels: int, out_channels: int, kernel: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(OrderedDict([
        ("conv", nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=kernel // 2, bias=False)),
        ("bn", nn.BatchNorm2d(out_channels)),
        ("act", nn.LeakyReLU(0.1)),
    ]))


class Stage(nn.Sequential):
    """A strided 3x3 conv, then ``depth - 1`` 3x3 convs."""

    def __init__(self, in_channels: int, out_channels: int, depth: int) -> None:
        layers = [("down", conv_bn(in_channels, out_channels, stride=2))]
        layers += [(f"conv{i}", conv_bn(out_channels, out_channels)) for i in range(1, depth)]
        super().__init__(OrderedDict(layers))


class Backbone(nn.Module):
    def __init__(self, in_channels: int, widths: Sequence[int], depth: int) -> None:
        super().__init__()
        channels = [in_channels, *widths]
        for i in range(len(widths)):
            self.add_module(f"stage{i + 1}", Stage(channels[i], channels[i + 1], depth))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The last two stages' outputs (the passthrough needs the one before the last)."""
        before = x
        for stage in self.children():
            before, x = x, stage(x)
        return before, x


class Passthrough(nn.Module):
    """YOLOv2's neck: the previous stage squeezed by a 1x1 conv to a quarter of its channels
    and folded to the last stage's grid (space-to-depth), concatenated with the last stage,
    then mixed by a 3x3 and a 1x1 conv."""

    def __init__(self, previous: int, last: int, width: int) -> None:
        super().__init__()
        squeezed = max(previous // 4, 1)
        self.squeeze = conv_bn(previous, squeezed, 1)
        self.mix = conv_bn(last + 4 * squeezed, width, 3)
        self.out = conv_bn(width, width, 1)

    def forward(self, previous: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        folded = F.pixel_unshuffle(self.squeeze(previous), 2)
        return self.out(self.mix(torch.cat([last, folded], dim=1)))


class Head(nn.Module):
    """1x1 conv to ``num_anchors * (5 + classes)``, viewed as ``(N, A, 5 + C, H, W)``."""

    def __init__(self, in_channels: int, num_anchors: int, num_classes: int) -> None:
        super().__init__()
        self.num_anchors, self.per_anchor = num_anchors, 5 + num_classes
        self.pred = nn.Conv2d(in_channels, num_anchors * self.per_anchor, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.pred(x)
        return out.view(out.shape[0], self.num_anchors, self.per_anchor, *out.shape[2:])


class YOLO(nn.Module):
    """Backbone, passthrough neck and grid head; outputs the raw head output (module docstring).

    :param widths: channels of ``backbone.stage1`` .. ``stageN`` (N >= 2; each halves the size).
    :param depth: 3x3 convs per stage (the first strided).
    :param neck_width: channels of ``neck``.
    :param num_anchors: anchors per cell; must match the task's ``data.anchors``.
    :param num_classes: object classes (from the data set; background is not a class).
    """

    def __init__(self, widths: Sequence[int] = (16, 32, 64), depth: int = 2, neck_width: int = 64,
                 num_anchors: int = 3, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        widths = [int(w) for w in widths]
        if len(widths) < 2 or min(widths) < 1:
            raise UserError(f"yolo: widths must list at least two stage widths >= 1, got {widths}")
        if depth < 1 or neck_width < 1 or num_anchors < 1:
            raise UserError(f"yolo: depth, neck_width and num_anchors must be >= 1, got {depth}, "
                            f"{neck_width}, {num_anchors}")
        self.backbone = Backbone(in_channels, widths, depth)
        self.neck = Passthrough(widths[-2], widths[-1], neck_width)
        self.head = Head(neck_width, num_anchors, num_classes)
        kaiming_init(self)
        with torch.no_grad():
            bias = self.head.pred.bias.view(num_anchors, 5 + num_classes)
            bias.zero_()
            bias[:, 4] = math.log(0.01 / 0.99)
            self.head.pred.weight.mul_(0.1)  # small initial offsets: boxes start at the anchors

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.neck(*self.backbone(x)))


def yolo(widths: Sequence[int] = (16, 32, 64), depth: int = 2, neck_width: int = 64,
         num_anchors: int = 3, num_classes: int = 10, in_channels: int = 1) -> YOLO:
    return YOLO(widths, depth, neck_width, num_anchors, num_classes, in_channels)


def yolo_teacher(num_anchors: int = 3, num_classes: int = 10, in_channels: int = 1) -> YOLO:
    """The detection teacher: widths 16/32/64, 2 convs per stage, neck 64."""
    return YOLO((16, 32, 64), 2, 64, num_anchors, num_classes, in_channels)


def yolo_student(num_anchors: int = 3, num_classes: int = 10, in_channels: int = 1) -> YOLO:
    """The detection student: widths 8/16/32, 1 conv per stage, neck 32."""
    return YOLO((8, 16, 32), 1, 32, num_anchors, num_classes, in_channels)
