"""Entry-point module: kept light, the command is imported when ``kdcore`` lists or runs it."""

import kdcore


@kdcore.hookimpl
def kdcore_commands():
    return [kdcore.Component(
        "draw", "kdcore_plugin_draw.command:draw",
        "a picture of test images: ground truth, teacher and each run's student (masks or boxes)")]
