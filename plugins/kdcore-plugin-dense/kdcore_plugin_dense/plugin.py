"""Entry-point module: kept light, the data set and models are imported on first use."""

import kdcore

_MODELS = "kdcore_plugin_dense.models"


@kdcore.hookimpl
def kdcore_datasets():
    return [kdcore.Component("fashion_scenes", "kdcore_plugin_dense.datasets:fashion_scenes",
                             "Fashion-MNIST items composed into scenes: masks (task: segmentation) or "
                             "boxes (task: detection), generated in memory")]


@kdcore.hookimpl
def kdcore_models():
    return [
        kdcore.Component("yolo", f"{_MODELS}:yolo",
                         "YOLOv2-style grid detector (widths, depth, neck_width, num_anchors) for scenes"),
        kdcore.Component("yolo_teacher", f"{_MODELS}:yolo_teacher",
                         "default fashion_scenes detection teacher: YOLO 16/32/64 x2, neck 64, "
                         "135k parameters"),
        kdcore.Component("yolo_student", f"{_MODELS}:yolo_student",
                         "default fashion_scenes detection student: YOLO 8/16/32 x1, neck 32, "
                         "22k parameters"),
        kdcore.Component("seg_net", f"{_MODELS}:SegNet",
                         "small U-Net shaped segmentation net (widths, depth, stride) for scenes"),
        kdcore.Component("seg_teacher", f"{_MODELS}:seg_teacher",
                         "default fashion_scenes teacher: SegNet 16/32/64/96, 206k parameters"),
        kdcore.Component("seg_student", f"{_MODELS}:seg_student",
                         "default fashion_scenes student: SegNet 8/8/16/32, 16k parameters"),
    ]


@kdcore.hookimpl
def kdcore_presets():
    return [kdcore.Preset("dense", "kdcore_plugin_dense:presets/fashion_scenes.yaml",
                          "the segmentation student alone on fashion_scenes (the baseline of the "
                          "cwd preset)")]
