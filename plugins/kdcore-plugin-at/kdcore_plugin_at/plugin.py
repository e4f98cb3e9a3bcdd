"""Entry-point module: kept light, the loss is imported on first use."""

import kdcore


@kdcore.hookimpl
def kdcore_losses():
    return [kdcore.Component("at", "kdcore_plugin_at.losses:ATLoss",
                             "Attention Transfer: mean squared difference of L2-normalised "
                             "spatial attention maps (channel mean of |F|^p)")]
