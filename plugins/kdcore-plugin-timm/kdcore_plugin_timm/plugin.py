"""Entry-point module: registers the ``timm`` model (timm is imported when one is built)."""

import kdcore


@kdcore.hookimpl
def kdcore_models():
    return [kdcore.Component("timm", "kdcore_plugin_timm.models:timm_model",
                             "any timm architecture: arch: resnet18 (pretrained only from a local file)")]
