"""kdcore-plugin-kd against kdcore's contract kit (kdcore.testing). The `kd` loss itself is
the core's (tests/test_kd_loss.py in kdcore)."""

from kdcore import testing


class TestPlugin(testing.PluginContract):
    distribution = "kdcore-plugin-kd"
    entry_point = "kd"
    components = {"preset": ["kd"]}
