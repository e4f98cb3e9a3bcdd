"""Built-in model families."""

from __future__ import annotations

from ..hookspecs import hookimpl
from ..specs import Component


@hookimpl
def kdcore_models() -> list[Component]:
    return [
        Component("cnn", "kdcore.models.cnn:SmallCNN", "small CNN for 28x28 inputs (widths, depth)"),
        Component("cnn_teacher", "kdcore.models.cnn:cnn_teacher",
                  "default 28x28 teacher: CNN 24/48/96, 53k parameters"),
        Component("cnn_student", "kdcore.models.cnn:cnn_student",
                  "default 28x28 student: CNN 8/16/32, 6.3k parameters"),
    ]
