"""kdcore-plugin-at against kdcore's contract kit (kdcore.testing)."""

from kdcore import testing


class TestPlugin(testing.PluginContract):
    distribution = "kdcore-plugin-at"
    entry_point = "at"
    components = {"loss": ["at"]}


class TestATContract(testing.LossContract):
    component = "at:at"
    params = {"p": 2.0}
    student_shape = (8, 7, 7)
    teacher_shape = (16, 7, 7)  # channel counts may differ: the attention map averages them
    more_shapes = [((4, 14, 14), (4, 14, 14))]
    bad_shapes = [((8, 7, 7), (16, 14, 14))]  # spatial sizes must match
