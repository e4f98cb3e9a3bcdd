"""Entry-point module: kept light, the losses are imported on first use."""

import kdcore


@kdcore.hookimpl
def kdcore_losses():
    return [
        kdcore.Component("crd", "kdcore_plugin_crd.losses:CRDLoss",
                         "CRD: symmetric NCE against momentum memory banks (Tian et al. 2020)"),
        kdcore.Component("crd_inbatch", "kdcore_plugin_crd.losses:CRDInBatchLoss",
                         "CRD variant: symmetric InfoNCE with in-batch negatives, no memory bank"),
    ]


@kdcore.hookimpl
def kdcore_presets():
    return [kdcore.Preset("crd", "kdcore_plugin_crd:presets/fashion_mnist.yaml",
                          "CRD on Fashion-MNIST: 128-d embeddings, memory banks over the whole training split")]
