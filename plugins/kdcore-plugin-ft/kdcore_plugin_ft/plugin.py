"""Entry-point module: kept light, the torch modules are imported on first use."""

import kdcore


@kdcore.hookimpl
def kdcore_losses():
    return [kdcore.Component("ft", "kdcore_plugin_ft.losses:FTLoss",
                             "Factor Transfer: p-norm between L2-normalised student and teacher factors")]


@kdcore.hookimpl
def kdcore_connectors():
    return [
        kdcore.Component("paraphraser", "kdcore_plugin_ft.connectors:Paraphraser",
                         "FT teacher factor encoder, pre-trained to reconstruct the teacher feature"),
        kdcore.Component("translator", "kdcore_plugin_ft.connectors:Translator",
                         "FT student connector: 3 convs to the paraphraser's factor size"),
    ]


@kdcore.hookimpl
def kdcore_presets():
    return [kdcore.Preset("ft", "kdcore_plugin_ft:presets/fashion_mnist.yaml",
                          "Factor Transfer on Fashion-MNIST: paraphraser pre-training, then FT on the last stage")]
