"""The FitNets regressor: maps the student's hint to the teacher's guided-layer shape."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

import kdcore


def _regressor_conv(in_shape: tuple[int, int, int], out_shape: tuple[int, int, int]) -> tuple[str, nn.Module]:
    """Pick the convolution from the spatial sizes (the RepDistiller/mdistiller ``ConvReg`` rule,
    applied to height AND width, where the reference code looks at the height only):

    * student exactly twice the teacher on both axes: 3x3 conv, stride 2, padding 1 (``down``);
    * student exactly half the teacher on both axes: 4x4 transposed conv, stride 2, padding 1
      (``up``);
    * student at least the teacher's size on both axes: conv with kernel ``(1+dH, 1+dW)``, no
      padding (``valid``; a 1x1 conv when the sizes are equal);
    * anything else: a :class:`kdcore.UserError`.
    """
    (s_c, s_h, s_w), (t_c, t_h, t_w) = in_shape, out_shape
    if (s_h, s_w) == (2 * t_h, 2 * t_w):
        return "down", nn.Conv2d(s_c, t_c, kernel_size=3, stride=2, padding=1)
    if (2 * s_h, 2 * s_w) == (t_h, t_w):
        return "up", nn.ConvTranspose2d(s_c, t_c, kernel_size=4, stride=2, padding=1)
    if s_h >= t_h and s_w >= t_w:
        return "valid", nn.Conv2d(s_c, t_c, kernel_size=(1 + s_h - t_h, 1 + s_w - t_w))
    raise kdcore.UserError(
        f"conv_reg cannot map the student feature {tuple(in_shape)} to the teacher feature "
        f"{tuple(out_shape)} (C, H, W): the student map is smaller than the teacher's but not "
        f"exactly half its size; tap a student layer of at least the teacher's resolution, or "
        f"exactly half of it")


class ConvReg(kdcore.Connector):
    """FitNets regressor ``r``: conv (see :func:`_regressor_conv`), BatchNorm, optional ReLU.

    The ReLU is on by default, as in RepDistiller and mdistiller: their guided feature is a
    post-ReLU stage output, which a regressor ending in ReLU can match exactly. Turn it off
    (``relu: false``) when the teacher feature is pre-activation (it has negative values).

    :param in_shape: per-sample student feature shape ``(C, H, W)`` (given by kdcore).
    :param out_shape: per-sample teacher feature shape ``(C, H, W)`` (given by kdcore).
    :param relu: end with a ReLU.
    """

    def __init__(self, in_shape: Sequence[int], out_shape: Sequence[int], relu: bool = True) -> None:
        super().__init__()
        if in_shape is None or out_shape is None or len(in_shape) != 3 or len(out_shape) != 3:
            raise kdcore.UserError(
                f"conv_reg needs (C, H, W) feature maps on both sides, got student "
                f"{None if in_shape is None else tuple(in_shape)} and teacher "
                f"{None if out_shape is None else tuple(out_shape)}; use {{type: linear}} for flat "
                f"features")
        self.kind, self.conv = _regressor_conv(tuple(in_shape), tuple(out_shape))
        self.bn = nn.BatchNorm2d(out_shape[0])
        self.relu = nn.ReLU() if relu else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))
