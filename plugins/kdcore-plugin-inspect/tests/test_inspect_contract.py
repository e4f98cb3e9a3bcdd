"""kdcore-plugin-inspect against kdcore's contract kit (kdcore.testing)."""

from kdcore import testing


class TestPlugin(testing.PluginContract):
    distribution = "kdcore-plugin-inspect"
    entry_point = "inspect"
    components = {"command": ["inspect"]}
