"""kdcore-plugin-teacher-cache against kdcore's contract kit (kdcore.testing), and its callback
built as a run builds it: by name, with the run's config."""

import kdcore
from kdcore import testing
from kdcore.config import load_config, unstructure


class TestPlugin(testing.PluginContract):
    distribution = "kdcore-plugin-teacher-cache"
    entry_point = "teacher_cache"
    components = {"callback": ["teacher_cache"]}


def test_the_callback_is_built_with_the_runs_config_and_defines_both_methods() -> None:
    config = unstructure(load_config({}, ["trainer.teacher_cache=true"]))
    callback = kdcore.build("callback", "teacher_cache", context={"config": config})
    assert callable(callback.check) and callable(callback.before_training)
    assert callback.config is config
