"""Contract tests from kdcore.testing: the installed distribution is a working kdcore plugin."""

from kdcore import testing


class TestPlugin(testing.PluginContract):
    distribution = "kdcore-plugin-mlflow"
    entry_point = "mlflow"
    components = {"logger": ["mlflow"]}
