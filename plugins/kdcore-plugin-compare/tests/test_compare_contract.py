"""kdcore-plugin-compare against kdcore's contract kit (kdcore.testing)."""

from kdcore import testing


class TestPlugin(testing.PluginContract):
    distribution = "kdcore-plugin-compare"
    entry_point = "compare"
    components = {"command": ["compare"]}
