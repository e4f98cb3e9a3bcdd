"""Entry-point module: kept light, the command is imported when ``kdcore compare`` runs."""

import kdcore


@kdcore.hookimpl
def kdcore_commands():
    return [kdcore.Component(
        "compare", "kdcore_plugin_compare.command:compare",
        "every method on your config over seeds: a table, a JSON of every run and a PNG of curves")]
