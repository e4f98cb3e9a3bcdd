"""Entry-point module: kept light, the command is imported when ``kdcore`` lists or runs it."""

import kdcore


@kdcore.hookimpl
def kdcore_commands():
    return [kdcore.Component(
        "inspect", "kdcore_plugin_inspect.command:inspect",
        "a model's module paths with output shapes; --pair TEACHER STUDENT: suggested distill points")]
