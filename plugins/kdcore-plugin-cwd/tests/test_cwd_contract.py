"""kdcore-plugin-cwd against kdcore's contract kit (kdcore.testing)."""

from kdcore import testing


class TestPlugin(testing.PluginContract):
    distribution = "kdcore-plugin-cwd"
    entry_point = "cwd"
    components = {"loss": ["cwd", "pixel_kd"]}


class TestCWDContract(testing.LossContract):
    component = "cwd:cwd"
    params = {"tau": 1.0}
    student_shape = (6, 8, 8)
    teacher_shape = (6, 8, 8)
    more_shapes = [((11, 16, 16), (11, 16, 16))]
    bad_shapes = [((6, 8, 8), (6, 16, 16))]  # spatial sizes must match


class TestPixelKDContract(testing.LossContract):
    component = "cwd:pixel_kd"
    params = {"temperature": 1.0}
    student_shape = (11, 8, 8)
    teacher_shape = (11, 8, 8)
    bad_shapes = [((11, 8, 8), (11, 16, 16))]
