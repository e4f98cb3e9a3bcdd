"""Entry-point module: kept light, the loss is imported on first use.

OFD's student connector is the core's ``conv1x1_bn``; this plugin adds only the loss.
"""

import kdcore


@kdcore.hookimpl
def kdcore_losses():
    return [kdcore.Component("ofd", "kdcore_plugin_ofd.losses:OFDLoss",
                             "OFD: partial L2 to the margin-clipped pre-ReLU teacher feature")]


@kdcore.hookimpl
def kdcore_presets():
    return [kdcore.Preset("ofd", "kdcore_plugin_ofd:presets/fashion_mnist.yaml",
                          "OFD on Fashion-MNIST: pre-ReLU features of stages 1-3, margin-clipped teacher side")]
