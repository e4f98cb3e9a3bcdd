"""Entry-point module: kept light, the loss is imported on first use."""

import kdcore


@kdcore.hookimpl
def kdcore_losses():
    return [kdcore.Component("at", "kdcore_plugin_at.losses:ATLoss",
                             "Attention Transfer: mean squared difference of L2-normalised "
                             "spatial attention maps (channel mean of |F|^p)")]


@kdcore.hookimpl
def kdcore_presets():
    return [kdcore.Preset("at", "kdcore_plugin_at:presets/fashion_mnist.yaml",
                          "Attention Transfer on Fashion-MNIST: CE + 1000 * AT at the three stage outputs")]
