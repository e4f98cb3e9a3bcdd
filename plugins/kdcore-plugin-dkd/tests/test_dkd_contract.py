"""kdcore-plugin-dkd against kdcore's contract kit (kdcore.testing)."""

from kdcore import testing


class TestPlugin(testing.PluginContract):
    distribution = "kdcore-plugin-dkd"
    entry_point = "dkd"
    components = {"loss": ["dkd"]}


class TestDKDContract(testing.LossContract):
    component = "dkd:dkd"
    params = {"alpha": 1.0, "beta": 8.0, "temperature": 4.0, "warmup_epochs": 0}
    student_shape = (10,)  # logits; targets come from the batch context
    num_classes = 10
    bad_shapes = [((10,), (12,)), ((8, 7, 7), (8, 7, 7))]  # logits of one width only
