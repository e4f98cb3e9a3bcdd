"""Training callbacks: plugins' code run at two points of a run, listed in ``trainer.callbacks``.

A callback may refuse a config before any model is built (``check(splits, augment)``) and act
once the student's batches exist, before the first epoch, resumed runs included
(``before_training(algorithm, batches, teachers, device, log)``); a method it does not define
is skipped. ``trainer.teacher_cache: true`` is short for the callback ``teacher_cache``
(kdcore-plugin-teacher-cache). See ``kdcore_callbacks`` in :mod:`kdcore.hookspecs`.
"""

from __future__ import annotations

from typing import Any

import attrs

from .config import ComponentConfig, RunConfig, unstructure
from .errors import UserError
from .registry import build, lookup


def callback_configs(config: RunConfig) -> list[tuple[str, ComponentConfig]]:
    """``(key path, block)`` of every callback: ``trainer.callbacks`` (a bare name is ``{type:
    name}``), then ``teacher_cache`` when ``trainer.teacher_cache`` asks for it and the list
    does not name it already."""
    listed = [(f"trainer.callbacks[{i}]", ComponentConfig(item) if isinstance(item, str) else item)
              for i, item in enumerate(config.trainer.callbacks)]
    if config.trainer.teacher_cache and all(block.type != "teacher_cache" for _, block in listed):
        listed.append(("trainer.teacher_cache", ComponentConfig("teacher_cache")))
    return listed


@attrs.frozen
class Callback:
    """A built callback and where it came from, for error lines."""

    where: str
    id: str
    obj: Any


def build_callbacks(config: RunConfig) -> list[Callback]:
    """The run's callbacks, built on every process (a typo or a missing plugin is one line
    naming the key), each once however many keys name it. A factory gets ``config`` (plain
    data, as loggers do) if it names it."""
    context = {"config": unstructure(config)}
    built: list[Callback] = []
    for where, block in callback_configs(config):
        reg = lookup("callback", block.type, where=where)
        if all(cb.id != reg.id for cb in built):
            obj = build("callback", block.type, where=where, context=context, **block.params)
            built.append(Callback(where, reg.id, obj))
    return built


def call_each(callbacks: list[Callback], method: str, **arguments: Any) -> None:
    """``callback.METHOD(**arguments)`` for each callback that defines ``method``, in order. A
    callback that fails with anything but a :class:`UserError` is one line naming it and its key
    (the traceback under ``KDCORE_DEBUG=1``)."""
    for callback in callbacks:
        hook = getattr(callback.obj, method, None)
        if hook is None:
            continue
        try:
            hook(**arguments)
        except (UserError, KeyboardInterrupt):
            raise
        except Exception as exc:
            raise UserError(f"{callback.where}: callback {callback.id!r} failed in {method}: "
                            f"{type(exc).__name__}: {exc}; this is a bug in its plugin (tell its "
                            f"authors, or leave it out of the config)", key_path=callback.where) from exc
