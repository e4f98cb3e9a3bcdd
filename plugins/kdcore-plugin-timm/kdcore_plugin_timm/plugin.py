"""Entry-point module: registers the ``timm`` model (timm is imported when one is built)."""

import kdcore


@kdcore.hookimpl
def kdcore_models():
    return [kdcore.Component("timm", "kdcore_plugin_timm.models:timm_model",
                             "any timm architecture: arch: resnet18 (pretrained only from a local file)")]


@kdcore.hookimpl
def kdcore_presets():
    return [kdcore.Preset("timm", "kdcore_plugin_timm:presets/fashion_mnist.yaml",
                          "Hinton KD, timm resnet10t teacher to mobilenetv3_small_050 student, Fashion-MNIST")]
