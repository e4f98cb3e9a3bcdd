"""Entry-point module: kept light, the command is imported when ``kdcore`` lists or runs it."""

import kdcore


@kdcore.hookimpl
def kdcore_commands():
    return [kdcore.Component(
        "export", "kdcore_plugin_export.command:export",
        "a run's student as a TorchScript or ONNX file, checked against the PyTorch student")]
