"""The dense models, sized for 64x64 scenes on a CPU: SegNet (segmentation) and YOLO (detection).

SegNet, a small encoder-decoder (U-Net shaped). Module paths, for distill points
(``kdcore inspect seg_teacher --dataset fashion_scenes``):

- ``enc1`` .. ``encN``: encoder stages; ``enc1`` works at half the input's resolution
  (``stride: 2``, the default; ``stride: 1`` keeps it), each further stage halves it (2x2 max pooling, then ``depth`` x (3x3 conv, BN, ReLU));
- ``dec{N-1}`` .. ``dec1``: decoder stages; ``decK`` upsamples the stage below it (bilinear),
  concatenates ``encK``'s skip feature and mixes both with 3x3 convs, so ``decK`` has
  ``encK``'s resolution and width;
- ``classifier``: a 1x1 conv giving the class logits at ``enc1``'s resolution; the model's
  ``output`` is those logits upsampled (bilinear) to the input's size ``(N, C, H, W)``.

Teacher and student share the layout and differ only in widths, so the same path has the same
resolution on both sides: feature distillation needs a connector for channels only.

YOLO, a small one-stage grid detector in the YOLOv2 mould. Module paths, for distill points
(``kdcore inspect yolo_teacher --dataset fashion_scenes``):

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

from kdcore.errors import UserError
from kdcore.models.init import kaiming_init


# --- segmentation ---------------------------------------------------------------------------------

class ConvBlock(nn.Sequential):
    """``depth`` x (3x3 conv, BN, ReLU); the last is ``conv``/``bn``/``relu``."""

    def __init__(self, in_channels: int, out_channels: int, depth: int = 1, stride: int = 1) -> None:
        layers: list[tuple[str, nn.Module]] = []
        for i in range(depth):
            suffix = "" if i == depth - 1 else str(i)
            layers += [(f"conv{suffix}", nn.Conv2d(in_channels if i == 0 else out_channels,
                                                   out_channels, 3, stride=stride if i == 0 else 1,
                                                   padding=1, bias=False)),
                       (f"bn{suffix}", nn.BatchNorm2d(out_channels)),
                       (f"relu{suffix}", nn.ReLU())]
        super().__init__(OrderedDict(layers))


class Down(nn.Sequential):
    """2x2 max pooling, then a :class:`ConvBlock`."""

    def __init__(self, in_channels: int, out_channels: int, depth: int = 1) -> None:
        super().__init__(OrderedDict([("pool", nn.MaxPool2d(2)),
                                      ("block", ConvBlock(in_channels, out_channels, depth))]))


class Up(nn.Module):
    """Upsample ``low`` to ``skip``'s size, concatenate, and mix with a :class:`ConvBlock`."""

    def __init__(self, low_channels: int, skip_channels: int, out_channels: int, depth: int = 1) -> None:
        super().__init__()
        self.block = ConvBlock(low_channels + skip_channels, out_channels, depth)

    def forward(self, low: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        low = F.interpolate(low, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.block(torch.cat([low, skip], dim=1))


class SegNet(nn.Module):
    """A U-Net shaped encoder-decoder: ``len(widths)`` resolutions, logits at the input's.

    :param widths: channels of ``enc1`` .. ``encN`` (the decoder mirrors them).
    :param depth: conv layers per stage.
    :param stride: ``enc1``'s first conv strides by this much (1 or 2); the classifier's logits
        are then upsampled (bilinear) to the input's size, as DeepLab and LR-ASPP do at 1/8.
        Stride 2 makes the net four times cheaper; the output is at the input's size either way.
    :param num_classes: output channels (background included; from the data set).
    :param background_prior: when set, the classifier starts out predicting this share of
        background (class 0) and the rest spread evenly over the other classes (small weights,
        biases at the log prior, as RetinaNet initialises its classifier), instead of random
        logits of a few units; see :func:`seg_student`.
    """

    def __init__(self, widths: Sequence[int] = (16, 32, 64, 96), depth: int = 1, stride: int = 2,
                 num_classes: int = 11, in_channels: int = 1,
                 background_prior: float | None = None) -> None:
        super().__init__()
        widths = [int(w) for w in widths]
        if len(widths) < 2 or min(widths) < 1:
            raise UserError(f"model parameter widths: {widths} needs at least two positive widths "
                            f"(one per resolution)")
        if stride not in (1, 2):
            raise UserError(f"model parameter stride: {stride!r} must be 1 or 2")
        self.levels, self.stride = len(widths), int(stride)
        self.enc1 = ConvBlock(in_channels, widths[0], depth, stride=self.stride)
        for k in range(1, self.levels):
            self.add_module(f"enc{k + 1}", Down(widths[k - 1], widths[k], depth))
        for k in range(self.levels - 1, 0, -1):  # dec{N-1} .. dec1
            self.add_module(f"dec{k}", Up(widths[k], widths[k - 1], widths[k - 1], depth))
        self.classifier = nn.Conv2d(widths[0], num_classes, 1)
        kaiming_init(self)
        if background_prior is not None:
            if not 0.0 < background_prior < 1.0 or num_classes < 2:
                raise UserError(f"model parameter background_prior: {background_prior!r} must be "
                                f"between 0 and 1 (the share of background pixels, e.g. 0.85)")
            nn.init.normal_(self.classifier.weight, std=0.01)
            with torch.no_grad():
                self.classifier.bias.fill_(math.log((1.0 - background_prior) / (num_classes - 1)))
                self.classifier.bias[0] = math.log(background_prior)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        factor = self.stride * 2 ** (self.levels - 1)
        pad_h, pad_w = -h % factor, -w % factor  # any size: pad to the coarsest grid, crop after
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        skips = [self.enc1(x)]
        for k in range(2, self.levels + 1):
            skips.append(getattr(self, f"enc{k}")(skips[-1]))
        y = skips[-1]
        for k in range(self.levels - 1, 0, -1):
            y = getattr(self, f"dec{k}")(y, skips[k - 1])
        logits = self.classifier(y)
        if self.stride > 1:
            logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return logits[..., :h, :w] if pad_h or pad_w else logits


def seg_teacher(num_classes: int = 11, in_channels: int = 1) -> SegNet:
    """The default ``fashion_scenes`` teacher: widths 16/32/64/96."""
    return SegNet((16, 32, 64, 96), depth=1, num_classes=num_classes, in_channels=in_channels)


def seg_student(num_classes: int = 11, in_channels: int = 1) -> SegNet:
    """The default ``fashion_scenes`` student: widths 8/8/16/32 (16k parameters, 12.5x smaller
    than the teacher), classifier started at the background prior (0.85 of the scenes' pixels).

    Why: the earlier 4/8/16/32 student (15k) with a random classifier stayed at "everything is
    background" (mIoU 7.70) for the whole 8 epochs on some seeds, since ten small classes beat
    the 85% background only once the features tell them apart through four ``dec1`` channels.
    Eight ``dec1`` channels and the prior start train every seed tried (docs/methods/cwd.md).
    """
    return SegNet((8, 8, 16, 32), depth=1, num_classes=num_classes, in_channels=in_channels,
                  background_prior=0.85)


# --- detection ------------------------------------------------------------------------------------

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
