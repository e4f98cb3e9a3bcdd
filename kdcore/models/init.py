"""The weight initialisation shared by kdcore's model families (He et al., fan-out)."""

from __future__ import annotations

from torch import nn


def kaiming_init(model: nn.Module, *, zero_linear_bias: bool = False) -> None:
    """He-normal convolutions, unit/zero BatchNorm; optionally zero the linear biases."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif zero_linear_bias and isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)
