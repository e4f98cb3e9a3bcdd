"""Entry-point module: kept light, the loss is imported on first use.

AB's connector is the core's ``conv1x1_bn``; this plugin adds only the loss (and its stage).
"""

import kdcore


@kdcore.hookimpl
def kdcore_losses():
    return [kdcore.Component("ab", "kdcore_plugin_ab.losses:ABLoss",
                             "activation boundaries: margin hinge on pre-ReLU signs, "
                             "with a student+connector init stage")]


@kdcore.hookimpl
def kdcore_presets():
    return [kdcore.Preset("ab", "kdcore_plugin_ab:presets/fashion_mnist.yaml",
                          "Activation Boundaries on Fashion-MNIST: pre-ReLU stages 1-3, conv1x1_bn connector, init stages")]
