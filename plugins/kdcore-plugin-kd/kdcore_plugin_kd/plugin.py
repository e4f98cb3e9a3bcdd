"""Entry-point module: kept light, the loss is imported on first use."""

import kdcore


@kdcore.hookimpl
def kdcore_losses():
    return [kdcore.Component("kd", "kdcore_plugin_kd.losses:KDLoss",
                             "Hinton KD: T^2 * KL(softmax(t/T) || softmax(s/T)), batch mean")]
