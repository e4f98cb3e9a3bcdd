"""Contract tests from kdcore.testing: the plugin loads on its own with every component it names,
the dense models map 64x64 scenes to their documented outputs and module paths, and
``fashion_scenes`` returns a data source of the declared shape for both tasks."""

import pytest

from kdcore import testing

MODELS = ["seg_net", "seg_student", "seg_teacher", "yolo", "yolo_student", "yolo_teacher"]
SCENES = {"train_scenes": 8, "test_scenes": 4}
TASK_SHAPES = "the task scores dense outputs, not the (N, classes) scores this check feeds it"


class TestPlugin(testing.PluginContract):
    distribution = "kdcore-plugin-dense"
    entry_point = "dense"
    components = {"dataset": ["fashion_scenes"], "model": MODELS, "preset": ["dense"]}


class TestSegStudentContract(testing.ModelContract):
    component = "dense:seg_student"
    input_shape = (1, 64, 64)
    num_classes = 11
    expected_output_shape = (11, 64, 64)
    module_paths = ["enc1", "enc4", "dec1", "classifier"]


class TestYoloStudentContract(testing.ModelContract):
    component = "dense:yolo_student"
    input_shape = (1, 64, 64)
    expected_output_shape = (3, 15, 8, 8)  # (anchors, 5 + classes, grid, grid)
    module_paths = ["backbone.stage1", "backbone.stage3", "neck", "head"]


@pytest.mark.fashion
class TestSegmentationScenesContract(testing.DatasetContract):
    component = "dense:fashion_scenes"
    params = SCENES
    expected = {"input_shape": (1, 64, 64), "num_classes": 11, "name": "fashion_scenes/segmentation",
                "train_size": 8, "test_size": 4}
    tests_to_skip = {TASK_SHAPES: ["test_task_scores_targets"]}


@pytest.mark.fashion
class TestDetectionScenesContract(testing.DatasetContract):
    component = "dense:fashion_scenes"
    params = {**SCENES, "task": "detection"}
    expected = {"input_shape": (1, 64, 64), "num_classes": 10, "name": "fashion_scenes/detection",
                "train_size": 8, "test_size": 4}
    tests_to_skip = {TASK_SHAPES: ["test_task_scores_targets"]}
