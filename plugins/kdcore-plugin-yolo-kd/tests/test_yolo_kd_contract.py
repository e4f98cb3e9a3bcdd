"""kdcore-plugin-yolo-kd against kdcore's contract kit (kdcore.testing)."""

from kdcore import testing


class TestPlugin(testing.PluginContract):
    distribution = "kdcore-plugin-yolo-kd"
    entry_point = "yolo_kd"
    components = {"loss": ["yolo_kd"]}


class TestYOLOKDContract(testing.LossContract):
    tests_to_skip = {"declares no pre-training stage": ["test_stages_valid"]}
    component = "yolo_kd:yolo_kd"
    student_shape = (3, 15, 8, 8)  # (anchors, 5 + classes, H, W): a YOLO head's raw output
    more_shapes = [((1, 6, 2, 3), (1, 6, 2, 3))]
    bad_shapes = [((32, 8, 8), (32, 8, 8)), ((10,), (10,))]
