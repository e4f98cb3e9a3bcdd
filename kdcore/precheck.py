"""Every component block of a config checked against its factory's signature, without building
anything or reading data: what ``kdcore run --print-config`` does before printing.

The run calls it too, first, before it reads any data or creates its run dir, and checks again
(through :func:`kdcore.registry.call_factory`) as it builds, with the values only the data and
the models give; this finds the unknown component, the misspelled parameter and the text given for a
number (``temperature: two``) while the config is only being looked at.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from .config import (
    ComponentConfig,
    DataConfig,
    HeadConfig,
    LossConfig,
    RunConfig,
    StudentConfig,
    TeacherConfig,
    block_keys,
)
from .errors import UserError
from .callbacks import callback_configs
from .loggers import logger_configs
from .models.imported import resolve_target, take_target, use_import_paths
from .registry import check_params, lookup

#: What the core offers a model factory (from the data set); a user may not set these.
MODEL_CONTEXT = {"num_classes": None, "in_channels": None}


def blocks(config: RunConfig) -> Iterator[tuple[str, str, Any, type, dict[str, Any]]]:
    """``(kind, where, block, block class, context)`` for each component block, labelled as
    the run labels it in its errors."""
    yield "dataset", "data", config.data, DataConfig, {}
    yield "model", "student", config.student, StudentConfig, MODEL_CONTEXT
    for i, teacher in enumerate(config.teachers):
        where = f"teachers[{i}]"
        yield "model", where, teacher, TeacherConfig, MODEL_CONTEXT
        for j, point in enumerate(teacher.distill):
            at = f"{where}.distill[{j}]"
            yield "head", f"{at}.head", point.head, HeadConfig, {}
            for side in ("student", "teacher"):
                connector = getattr(point.head, f"{side}_connector")
                if connector is not None:
                    yield "connector", f"{at}.head.{side}_connector", connector, ComponentConfig, {}
            for k, loss in enumerate(point.head.losses):
                yield "loss", f"{at}.head.losses[{k}]", loss, LossConfig, {}
    if config.teachers:
        yield "distiller", "distiller", config.distiller, ComponentConfig, {}
    yield "algorithm", "algorithm", config.algorithm, ComponentConfig, {}
    for i, block in enumerate(logger_configs(config)):
        yield "logger", f"trainer.loggers[{i}]", block, ComponentConfig, {}
    for where, block in callback_configs(config):
        yield "callback", where, block, ComponentConfig, {}


def check_components(config: RunConfig) -> None:
    """Raise :class:`kdcore.errors.UserError` for the first block whose type is unknown or
    whose parameters its factory would refuse, or for teachers given to an algorithm whose class
    says ``takes_teachers = False`` (it would ignore them, or the user meant another algorithm)."""
    use_import_paths(config.import_paths)
    for kind, where, block, cls, context in blocks(config):
        if kind == "model" and block.type == "import":  # the user's function is the factory
            params = dict(block.params)
            factory = resolve_target(take_target(params, where), where=where)
            check_params(factory, params, context, where=where,
                         block_keys=[*block_keys(cls), "target"], dry=True)
            continue
        registered = lookup(kind, block.type, where=where)
        try:
            factory = registered.component.resolve()
        except Exception:  # a factory that does not import: the run names it and its plugin
            continue
        check_params(factory, block.params, context, where=where, block_keys=block_keys(cls), dry=True)
        if kind == "algorithm" and config.teachers and getattr(factory, "takes_teachers", True) is False:
            raise UserError(f"config key teachers: algorithm {block.type!r} learns without "
                            f"teachers, but the config gives {len(config.teachers)}; set teachers: [] "
                            f"(--set teachers=[]), or pick an algorithm that distils (teacher_student)",
                            key_path="teachers")
