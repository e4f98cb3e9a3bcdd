"""kdcore-plugin-rkd against kdcore's contract kit (kdcore.testing)."""

from kdcore import testing


class TestPlugin(testing.PluginContract):
    distribution = "kdcore-plugin-rkd"
    entry_point = "rkd"
    components = {"loss": ["rkd", "rkd_distance", "rkd_angle"]}


class TestRKDContract(testing.LossContract):
    component = "rkd:rkd"
    student_shape = (32,)
    teacher_shape = (96,)  # relational: only distances and angles within a side are compared
    more_shapes = [((8, 7, 7), (16, 7, 7))]


class TestRKDDistanceContract(TestRKDContract):
    component = "rkd:rkd_distance"


class TestRKDAngleContract(TestRKDContract):
    component = "rkd:rkd_angle"
