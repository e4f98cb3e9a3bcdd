"""Entry-point module: kept light, the losses are imported on first use."""

import kdcore


@kdcore.hookimpl
def kdcore_losses():
    return [
        kdcore.Component("cwd", "kdcore_plugin_cwd.losses:ChannelWiseDivergence",
                         "Channel-Wise Distillation: per channel, KL between softmaxes over the "
                         "spatial positions (logits or feature maps)"),
        kdcore.Component("pixel_kd", "kdcore_plugin_cwd.losses:PixelKD",
                         "pixel-wise KD: per pixel, KL between softmaxes over the classes"),
    ]


@kdcore.hookimpl
def kdcore_presets():
    return [kdcore.Preset("cwd", "kdcore_plugin_cwd:presets/fashion_scenes.yaml",
                          "CWD on the logits, SegNet teacher -> 16k-parameter student, "
                          "fashion_scenes segmentation")]
