"""kdcore-plugin-meal against kdcore's contract kit (kdcore.testing)."""

from kdcore import testing


class TestPlugin(testing.PluginContract):
    distribution = "kdcore-plugin-meal"
    entry_point = "meal"
    components = {"algorithm": ["meal_v2"]}


class TestMealV2Contract(testing.AlgorithmContract):
    component = "meal:meal_v2"
    teachers = 2  # an ensemble
    params = {"disc_hidden": [8]}
