"""Entry-point module: kept light, the loss is imported on first use."""

import kdcore


@kdcore.hookimpl
def kdcore_losses():
    return [kdcore.Component("yolo_kd", "kdcore_plugin_yolo_kd.losses:YOLOKDLoss",
                             "objectness-scaled detection distillation on a YOLO head's raw output "
                             "(objectness, class and box imitation), FM-NMS on the teacher (Mehta & Ozturk 2018)")]


@kdcore.hookimpl
def kdcore_presets():
    return [kdcore.Preset("yolo_kd", "kdcore_plugin_yolo_kd:presets/fashion_scenes.yaml",
                          "detection on fashion_scenes: YOLO student + yolo_kd on the head, FM-NMS on")]
