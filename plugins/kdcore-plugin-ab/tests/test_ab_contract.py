"""kdcore-plugin-ab against kdcore's contract kit (kdcore.testing)."""

from kdcore import testing


class TestPlugin(testing.PluginContract):
    distribution = "kdcore-plugin-ab"
    entry_point = "ab"
    components = {"loss": ["ab"]}


class TestABContract(testing.LossContract):
    component = "ab:ab"
    params = {"margin": 1.0, "init_epochs": 1}
    student_shape = (8, 7, 7)  # pre-ReLU features, after the student connector
