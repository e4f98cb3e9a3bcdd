"""MEAL V2 reads every teacher's output: with the teacher-output cache on and an extra distill
point on a feature, the cache must hold the output too (it held only the points' taps and the
step stopped with KeyError 'output')."""

from __future__ import annotations

import pytest

from kdcore.testing import run_preset

POINT = ("teachers.0.distill=[{student_module: embedding, teacher_module: embedding, "
         "head: {student_connector: {type: linear}, losses: [{type: kd, weight: 0.1}]}}]")
TINY = ("data.train_limit=128", "data.test_limit=128", "trainer.epochs=1", "trainer.progress=false",
        "trainer.threads=1", "teachers.0.train.epochs=1", "teachers.1.train.epochs=1",
        "teachers.0.train.train_limit=128", "teachers.1.train.train_limit=128")


@pytest.mark.e2e
def test_extra_distill_point_with_teacher_cache(tmp_path):
    summary = run_preset("kdcore_plugin_meal", "fashion_mnist.yaml", tmp_path, algo="meal_v2",
                         sets=(*TINY, POINT, "trainer.teacher_cache=true"))
    assert {"kl", "disc", "teacher.kd"} <= set(summary["last_train"]), summary["last_train"]
