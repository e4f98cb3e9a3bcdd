"""kdcore-plugin-ofd against kdcore's contract kit (kdcore.testing)."""

import torch
from torch import nn

from kdcore import testing
from kdcore.components.distiller import freeze


def _teacher_bn(channels: int) -> nn.BatchNorm2d:
    """The frozen BatchNorm at the teacher tap, with non-trivial statistics for the margin."""
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(channels)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.normal_(0, 0.5)
    return freeze(bn)


class TestPlugin(testing.PluginContract):
    distribution = "kdcore-plugin-ofd"
    entry_point = "ofd"
    components = {"loss": ["ofd"]}


class TestOFDContract(testing.LossContract):
    component = "ofd:ofd"
    student_shape = (8, 7, 7)  # pre-ReLU, after the student connector
    context = {"teacher_module": _teacher_bn(8)}
    tests_to_skip = {"the margin needs the teacher's BatchNorm (teacher_module)":
                     ["test_builds_with_defaults"]}
