"""Entry-point module: kept light, the loss is imported on first use."""

import kdcore


@kdcore.hookimpl
def kdcore_losses():
    return [kdcore.Component("dkd", "kdcore_plugin_dkd.losses:DKDLoss",
                             "Decoupled KD: T^2 * (alpha * TCKD + beta * NCKD) on logits, "
                             "with a linear warm-up; needs class labels")]


@kdcore.hookimpl
def kdcore_presets():
    return [kdcore.Preset("dkd", "kdcore_plugin_dkd:presets/fashion_mnist.yaml",
                          "Decoupled KD on Fashion-MNIST: alpha 1, beta 8, T 4 on the logits")]
