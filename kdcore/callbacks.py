"""Training callbacks: plugins' code run at two points of a run, listed in ``trainer.callbacks``.

A callback may refuse a config before any model is built (``check(splits, augment)``) and act
once the student's batches exist, before the first epoch, resumed runs included
(``before_training(algorithm, batches, teachers, device, log)``); a method it does not define
is skipped. ``trainer.teacher_cache: true`` is short for the callback ``teacher_cache``
(kdcore-plugin-teacher-cache). See ``kdcore_callbacks`` in :mod:`kdcore.hookspecs`.
"""

from __future__ import annotations

from typing import Any

from .config import ComponentConfig, RunConfig, unstructure
from .registry import build


def callback_configs(config: RunConfig) -> list[tuple[str, ComponentConfig]]:
    """``(key path, block)`` of every callback: ``trainer.callbacks`` (a bare name is ``{type:
    name}``), then ``teacher_cache`` when ``trainer.teacher_cache`` asks for it and the list
    does not name it already."""
    listed = [(f"trainer.callbacks[{i}]", ComponentConfig(item) if isinstance(item, str) else item)
              for i, item in enumerate(config.trainer.callbacks)]
    if config.trainer.teacher_cache and all(block.type != "teacher_cache" for _, block in listed):
        listed.append(("trainer.teacher_cache", ComponentConfig("teacher_cache")))
    return listed


def build_callbacks(config: RunConfig) -> list[Any]:
    """The run's callbacks, built on every process (a typo or a missing plugin is one line
    naming the key). A factory gets ``config`` (plain data, as loggers do) if it names it."""
    context = {"config": unstructure(config)}
    return [build("callback", block.type, where=where, context=context, **block.params)
            for where, block in callback_configs(config)]


def call_each(callbacks: list[Any], method: str, **arguments: Any) -> None:
    """``callback.METHOD(**arguments)`` for each callback that defines ``method``, in order."""
    for callback in callbacks:
        hook = getattr(callback, method, None)
        if hook is not None:
            hook(**arguments)
