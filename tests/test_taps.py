"""Feature taps by dotted path: nested containers, inputs, the model output, clear errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kdcore.errors import UserError
from kdcore.taps import FeatureTaps, Tap, feature_shapes, module_paths


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(4, 6), nn.ReLU(inplace=True),
                                    nn.ModuleList([nn.Linear(6, 5), nn.Linear(5, 3)]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers[1](self.layers[0](x))
        for layer in self.layers[2]:
            x = layer(x)
        return x


def test_nested_sequential_and_modulelist_paths() -> None:
    net = Net()
    x = torch.randn(2, 4)
    with FeatureTaps(net, [Tap("layers.2.0"), Tap("layers.2.1", "input"), Tap("output")]) as taps:
        out = net(x)
        taps.record_output(out)
        hidden = torch.relu(net.layers[0](x))
        expected = net.layers[2][0](hidden)
        assert torch.allclose(taps[Tap("layers.2.0")], expected)
        assert torch.allclose(taps[Tap("layers.2.1", "input")], expected)
        assert taps[Tap("output")] is out


def test_inplace_activation_does_not_overwrite_a_recorded_pre_activation() -> None:
    net = Net()
    with FeatureTaps(net, [Tap("layers.0")]) as taps:
        net(torch.randn(64, 4))
        assert (taps[Tap("layers.0")] < 0).any(), "the pre-ReLU feature was clobbered in place"


def test_hooks_are_removed() -> None:
    net = Net()
    taps = FeatureTaps(net, [Tap("layers.0")])
    taps.remove()
    net(torch.randn(1, 4))
    assert taps.features == {}
    assert not net.layers[0]._forward_hooks


def test_unknown_path_lists_closest_paths() -> None:
    with pytest.raises(UserError) as info:
        FeatureTaps(Net(), [Tap("layers.2.2")], where="student module path")
    message = str(info.value)
    assert message.startswith("student module path 'layers.2.2' does not exist in Net")
    assert "'layers.2.0'" in message and "kdcore inspect" in message


def test_feature_shapes_and_paths() -> None:
    net = Net()
    shapes = feature_shapes(net, torch.zeros(2, 4))
    assert shapes["output"] == (3,) and shapes["layers.2.0"] == (5,)
    assert module_paths(net)[0] == "output" and "layers.2.1" in module_paths(net)
