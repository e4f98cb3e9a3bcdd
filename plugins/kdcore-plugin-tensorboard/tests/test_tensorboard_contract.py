"""Contract tests from kdcore.testing: the installed distribution is a working kdcore plugin."""

from kdcore import testing


class TestPlugin(testing.PluginContract):
    distribution = "kdcore-plugin-tensorboard"
    entry_point = "tensorboard"
    components = {"logger": ["tensorboard"]}
