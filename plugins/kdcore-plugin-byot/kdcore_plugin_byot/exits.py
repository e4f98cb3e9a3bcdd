"""Shallow exit classifiers and the early-exit networks that evaluate them.

The paper attaches a ResNet-style bottleneck (later with an attention module) after each shallow
stage. Here the bottleneck is deliberately small, so it runs on a CPU: blocks of
3x3 conv -> BN -> ReLU with the deepest feature's channel count, stride 2 while the map is larger
than the deepest map (at least one block, stride 1 if no downsampling is needed); then global
average pooling and one linear layer.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from kdcore.taps import resolve_module


class ExitClassifier(nn.Module):
    """Bottleneck + pooling + fc on one shallow feature map.

    Returns ``(feature, logits)``: ``feature`` has the deepest feature's per-sample shape (a
    flat vector after global pooling, or a map pooled to the deep map's size), so it can be
    pulled towards the deepest feature with an L2 loss.

    :param in_shape: per-sample shape ``(C, H, W)`` of the exit's feature map.
    :param deep_shape: per-sample shape of the deepest feature: ``(D,)`` or ``(D, H, W)``.
    :param target_hw: the spatial size the bottleneck downsamples to (the deepest map's).
    :param num_classes: classifier outputs.
    """

    def __init__(self, in_shape: tuple[int, ...], deep_shape: tuple[int, ...],
                 target_hw: int, num_classes: int) -> None:
        super().__init__()
        if len(in_shape) != 3:
            raise ValueError(f"an exit needs a feature map (C, H, W), got per-sample shape {in_shape}")
        if len(deep_shape) not in (1, 3):
            raise ValueError(f"the deepest feature must be a vector (D,) or a map (D, H, W), got {deep_shape}")
        channels, height = in_shape[0], in_shape[1]
        out_channels = deep_shape[0]
        layers: list[tuple[str, nn.Module]] = []
        i = 0
        while True:
            stride = 2 if height > target_hw else 1
            layers += [(f"conv{i}", nn.Conv2d(channels, out_channels, 3, stride=stride, padding=1, bias=False)),
                       (f"bn{i}", nn.BatchNorm2d(out_channels)),
                       (f"relu{i}", nn.ReLU())]
            channels, height, i = out_channels, (height + 1) // 2 if stride == 2 else height, i + 1
            if height <= target_hw:
                break
        self.bottleneck = nn.Sequential(OrderedDict(layers))
        self.deep_hw = tuple(deep_shape[1:]) if len(deep_shape) == 3 else None
        self.fc = nn.Linear(out_channels, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fmap = self.bottleneck(x)
        pooled = fmap.mean(dim=(2, 3))
        if self.deep_hw is None:
            feature = pooled
        else:
            feature = nn.functional.adaptive_avg_pool2d(fmap, self.deep_hw)
        return feature, self.fc(pooled)


class _Stop(Exception):
    """Raised by the exit hook to end the forward pass at the exit."""


class ExitModel(nn.Module):
    """The network run up to ``path`` (the rest is skipped), then the exit classifier.

    Works with any network: a forward hook at ``path`` records the feature and raises, so no
    layer after the exit runs. The hook lives only during ``forward``.
    """

    def __init__(self, network: nn.Module, path: str, classifier: ExitClassifier) -> None:
        super().__init__()
        self.network = network
        self.path = path
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        captured: dict[str, torch.Tensor] = {}

        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            captured["feature"] = output
            raise _Stop

        handle = resolve_module(self.network, self.path).register_forward_hook(hook)
        try:
            self.network(x)
        except _Stop:
            pass
        finally:
            handle.remove()
        if "feature" not in captured:
            raise RuntimeError(f"exit {self.path!r} was not reached by the forward pass")
        return self.classifier(captured["feature"])[1]
