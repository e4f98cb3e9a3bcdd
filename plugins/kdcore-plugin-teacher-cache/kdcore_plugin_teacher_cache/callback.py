"""The ``teacher_cache`` callback: what ``trainer.teacher_cache: true`` turns on."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from kdcore.engine.teachers import Teacher

from .teacher_cache import attach_teacher_cache, check_teacher_cache


class TeacherCache:
    """Refuses a config whose teacher outputs change from epoch to epoch (random augmentation,
    a data set read one sample at a time), then fills (or finds) each teacher's cache and makes
    the distiller read from it. Same results as running the teachers, within float rounding."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config  # the run's, as plain data

    def check(self, splits: Any, augment: Any) -> None:
        check_teacher_cache(self.config["teachers"], splits.student_train, augment)

    def before_training(self, algorithm: Any, batches: Any, teachers: dict[str, Teacher],
                        device: torch.device, log: Callable[[str], None]) -> None:
        if algorithm.distiller is None:  # no teachers: nothing to cache
            return
        attach_teacher_cache(algorithm.distiller, getattr(batches, "data", None), teachers, device,
                             batch_size=self.config["data"]["eval_batch_size"],
                             progress=self.config["trainer"]["progress"], log=log,
                             half_maps=getattr(algorithm.task, "target_kind", "label") != "label")
