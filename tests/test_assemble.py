"""Term names of a run's losses (kdcore.assemble.term_names): unique and readable, or one line
naming the clash."""

from __future__ import annotations

import pytest

from kdcore.assemble import term_names
from kdcore.config import load_config
from kdcore.errors import UserError


def _config(*points: dict, teachers: int = 1):
    return load_config({"student": {"type": "cnn_student"}, "teachers": [
        {"name": f"t{i}", "type": "cnn_teacher", "distill": list(points)} for i in range(teachers)]})


def _point(module: str, *losses: dict) -> dict:
    return {"student_module": module, "teacher_module": module, "head": {"losses": list(losses)}}


def test_a_name_at_several_points_takes_the_student_module() -> None:
    config = _config(_point("output", {"type": "kd"}, {"type": "mse"}), _point("stage1", {"type": "mse"}))
    assert term_names(config) == [[["kd", "mse@output"], ["mse@stage1"]]]


def test_several_teachers_prefix_their_name() -> None:
    assert term_names(_config(_point("output", {"type": "kd"}), teachers=2)) == [[["t0.kd"]], [["t1.kd"]]]


def test_one_loss_twice_at_one_point_asks_for_a_name() -> None:
    with pytest.raises(UserError, match=r"^two loss terms are both named 'kd@output'; give one a 'name:'"):
        term_names(_config(_point("output", {"type": "kd"}, {"type": "kd"})))
    named = _point("output", {"type": "kd"}, {"type": "kd", "name": "kd_hot"})
    assert term_names(_config(named)) == [[["kd", "kd_hot"]]]
