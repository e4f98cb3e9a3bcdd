"""kdcore-plugin-byot against kdcore's contract kit (kdcore.testing)."""

from kdcore import testing


class TestPlugin(testing.PluginContract):
    distribution = "kdcore-plugin-byot"
    entry_point = "byot"
    components = {"algorithm": ["self_distillation"]}


class TestSelfDistillationContract(testing.AlgorithmContract):
    component = "byot:self_distillation"
    teachers = 0  # the network teaches its own shallow exits
    params = {"exits": ["stage1", "stage2"], "deep_feature": "embedding"}
