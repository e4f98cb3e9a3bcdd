"""Entry-point module: kept light, the torch modules are imported on first use."""

import kdcore


@kdcore.hookimpl
def kdcore_losses():
    return [kdcore.Component("fitnet", "kdcore_plugin_fitnet.losses:FitNetLoss",
                             "FitNets hint loss: MSE between regressed student hint and teacher "
                             "guided feature; optional hint pre-training stage")]


@kdcore.hookimpl
def kdcore_connectors():
    return [kdcore.Component("conv_reg", "kdcore_plugin_fitnet.connectors:ConvReg",
                             "FitNets regressor: conv (stride 2 / transposed / valid kernel) "
                             "to the teacher's shape, then BN and optional ReLU")]


@kdcore.hookimpl
def kdcore_presets():
    return [kdcore.Preset("fitnet", "kdcore_plugin_fitnet:presets/fashion_mnist.yaml",
                          "FitNets on Fashion-MNIST: CE + 100 * hint loss on stage2 through conv_reg")]
