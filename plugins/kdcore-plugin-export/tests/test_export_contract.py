"""kdcore-plugin-export against kdcore's contract kit (kdcore.testing)."""

from kdcore import testing


class TestPlugin(testing.PluginContract):
    distribution = "kdcore-plugin-export"
    entry_point = "export"
    components = {"command": ["export"]}
