"""kdcore-plugin-kd against kdcore's contract kit (kdcore.testing)."""

from kdcore import testing


class TestPlugin(testing.PluginContract):
    distribution = "kdcore-plugin-kd"
    entry_point = "kd"
    components = {"loss": ["kd"]}


class TestKDContract(testing.LossContract):
    component = "kd:kd"
    params = {"temperature": 4.0}
    student_shape = (10,)  # logits
    more_shapes = [((100,), (100,))]
