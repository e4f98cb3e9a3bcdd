"""Entry-point module: kept light, the losses are imported on first use."""

import kdcore


@kdcore.hookimpl
def kdcore_losses():
    return [
        kdcore.Component("rkd", "kdcore_plugin_rkd.losses:RKDLoss",
                         "RKD: 25 * distance + 50 * angle relational loss (Park et al. 2019)"),
        kdcore.Component("rkd_distance", "kdcore_plugin_rkd.losses:RKDDistanceLoss",
                         "RKD distance term: Huber between mean-normalised pairwise distances"),
        kdcore.Component("rkd_angle", "kdcore_plugin_rkd.losses:RKDAngleLoss",
                         "RKD angle term: Huber between cosines of triplet angles"),
    ]


@kdcore.hookimpl
def kdcore_presets():
    return [kdcore.Preset("rkd", "kdcore_plugin_rkd:presets/fashion_mnist.yaml",
                          "RKD on Fashion-MNIST: distance + angle on the 96-d / 32-d embeddings")]
