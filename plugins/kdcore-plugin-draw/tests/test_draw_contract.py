"""kdcore-plugin-draw against kdcore's contract kit (kdcore.testing)."""

from kdcore import testing


class TestPlugin(testing.PluginContract):
    distribution = "kdcore-plugin-draw"
    entry_point = "draw"
    components = {"command": ["draw"]}
