"""Built-in presets: the default job and its student-alone baseline."""

from __future__ import annotations

from ..hookspecs import hookimpl
from ..specs import Preset


@hookimpl
def kdcore_presets() -> list[Preset]:
    return [
        Preset("teacher_student", "kdcore:presets/teacher_student.yaml",
               "the default job: Hinton KD, CNN teacher -> 6.3k-parameter CNN student, Fashion-MNIST"),
        Preset("vanilla", "kdcore:presets/vanilla.yaml",
               "the default student alone on Fashion-MNIST (the baseline)"),
    ]
