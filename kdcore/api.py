"""Distilling from Python, with the models and data a notebook already holds.

    import kdcore
    summary, student = kdcore.distill(my_student, {"teacher": my_teacher},
                                      train=(x_train, y_train), test=(x_test, y_test),
                                      config={"trainer": {"epochs": 3}})

:func:`distill` runs exactly what ``kdcore run`` runs, the same engine on the same config: the
modules and data are registered as components of an in-process plugin named ``api``
(``api:student``, ``api:teacher0``, ``api:data``) for the duration of the call, and the run
writes its run directory, checkpoints, ``metrics.jsonl``, ``student.pt`` and ``summary.json``
as any run. ``resume=RUN_DIR`` continues a stopped one, given the same objects.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from importlib import resources
from typing import Any

import torch
from torch import nn

from .config import DataConfig, TeacherConfig, block_keys, load_config, load_yaml, read_yaml
from .data import DataSource, TensorSplit
from .errors import UserError
from .files import cache_dir
from .hookspecs import hookimpl
from .specs import Component

#: The plugin name the objects of a call are registered under.
PLUGIN = "api"
#: A teacher without a distill block of its own gets the default job's: Hinton KD on the logits.
DEFAULT_DISTILL = [{"student_module": "output", "teacher_module": "output",
                    "head": {"losses": [{"type": "kd", "temperature": 4.0}]}}]

Data = Any  # (inputs, targets) tensors, a TensorSplit, or a map-style Dataset of (input, target)


def _split(data: Data, what: str) -> Any:
    if isinstance(data, (TensorSplit, torch.utils.data.Dataset)):
        return data
    if isinstance(data, Sequence) and len(data) == 2 and all(torch.is_tensor(t) for t in data):
        inputs, targets = data
        if len(inputs) != len(targets):
            raise UserError(f"{what}: {len(inputs)} inputs but {len(targets)} targets")
        if inputs.dim() < 2:
            raise UserError(f"{what}: inputs of shape {tuple(inputs.shape)}; expected (N, C, H, W) "
                            f"or (N, features)")
        return TensorSplit(inputs.float(), targets if targets.is_floating_point() else targets.long())
    raise UserError(f"{what}: expected (inputs, targets) tensors or a torch Dataset of "
                    f"(input, target), got {type(data).__name__}")


def _fingerprint(split: Any) -> str:
    """The data's identity for caches: a hash of the tensors, or a Dataset's type and size."""
    if isinstance(split, TensorSplit):
        digest = hashlib.sha256()
        for t in (split.inputs, split.targets):
            digest.update(str((tuple(t.shape), t.dtype)).encode())
            digest.update(t.detach().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()[:16]
    return f"{type(split).__module__}.{type(split).__qualname__}:{len(split)}"


def make_source(train: Data, test: Data, task: Any = None, num_classes: int | None = None) -> DataSource:
    """A :class:`DataSource` from what the user holds; a classification task by default, with
    as many classes as the largest label + 1 when ``num_classes`` is not given."""
    from .task import ClassificationTask

    train_split, test_split = _split(train, "train"), _split(test, "test")
    sample = train_split.inputs[0] if isinstance(train_split, TensorSplit) else train_split[0][0]
    if task is None:
        if num_classes is None:
            if not isinstance(train_split, TensorSplit):
                raise UserError("num_classes: give it (or a task) when train is a Dataset")
            labels = [s.targets for s in (train_split, test_split) if isinstance(s, TensorSplit)]
            num_classes = max(int(t.max()) for t in labels) + 1
        task = ClassificationTask(num_classes)
    fingerprint = "api-" + hashlib.sha256(
        (_fingerprint(train_split) + _fingerprint(test_split)).encode()).hexdigest()[:16]
    return DataSource(train_split, test_split, task, tuple(sample.shape),
                      num_classes if num_classes is not None else getattr(task, "num_classes", None),
                      fingerprint, name="api")


class _Objects:
    """The in-process plugin: the user's modules and data as components (copies per build, so
    the checks kdcore makes before training never touch the user's objects)."""

    def __init__(self, student: nn.Module, teachers: list[nn.Module], source: DataSource) -> None:
        self.student, self.teachers, self.source = student, teachers, source

    @hookimpl
    def kdcore_models(self) -> list[Component]:
        models = [Component("student", lambda: copy.deepcopy(self.student), "the student passed in")]
        models += [Component(f"teacher{i}", (lambda t=t: copy.deepcopy(t)), "a teacher passed in")
                   for i, t in enumerate(self.teachers)]
        return models

    @hookimpl
    def kdcore_datasets(self) -> list[Component]:
        return [Component("data", lambda: self.source, "the data passed in")]


def _teacher_file(teacher: nn.Module) -> str:
    """The teacher's weights, saved once by their hash, as the run's teacher checkpoint."""
    from .engine.checkpoint import save_atomic
    from .engine.teachers import weights_checksum

    path = os.path.join(cache_dir(), "api-teachers", f"{weights_checksum(teacher)[:16]}.pt")
    if not os.path.exists(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        save_atomic(teacher.state_dict(), path)
    return path


def _config_data(config: Mapping[str, Any] | str | os.PathLike | None) -> dict[str, Any]:
    if config is None:
        return load_yaml((resources.files("kdcore") / "presets" / "teacher_student.yaml").read_text())
    if isinstance(config, (str, os.PathLike)):
        return read_yaml(os.fspath(config))
    return copy.deepcopy(dict(config))


def _run_config(data: dict[str, Any], teachers: dict[str, nn.Module]) -> dict[str, Any]:
    """The user's config with the objects in place of the student, teachers and data set."""
    data["student"] = {"type": f"{PLUGIN}:student"}
    given = data.get("teachers") or []
    own = block_keys(TeacherConfig)
    blocks = []
    for i, (name, teacher) in enumerate(teachers.items()):
        base = next((b for b in given if isinstance(b, dict) and b.get("name") == name),
                    given[i] if i < len(given) and isinstance(given[i], dict) else {})
        block = {k: v for k, v in base.items() if k in own and k not in ("type", "checkpoint", "train")}
        block.update(type=f"{PLUGIN}:teacher{i}", name=name, checkpoint=_teacher_file(teacher))
        block.setdefault("distill", copy.deepcopy(DEFAULT_DISTILL))
        blocks.append(block)
    data["teachers"] = blocks
    algorithm = data.get("algorithm") if isinstance(data.get("algorithm"), dict) else {}
    if not teachers and algorithm.get("type", "teacher_student") == "teacher_student":
        data["algorithm"] = {"type": "vanilla"}
    sizes = {k: v for k, v in (data.get("data") or {}).items() if k in block_keys(DataConfig)}
    data["data"] = {**sizes, "type": f"{PLUGIN}:data"}  # batch sizes, limits, augment: not the data set
    return data


def distill(student: nn.Module, teachers: nn.Module | Mapping[str, nn.Module] | None = None, *,
            train: Data, test: Data, task: Any = None, num_classes: int | None = None,
            config: Mapping[str, Any] | str | os.PathLike | None = None, overrides: Sequence[str] = (),
            resume: str | os.PathLike | None = None,
            log: Callable[[str], None] = print) -> tuple[dict[str, Any], nn.Module]:
    """Distill ``teachers`` into ``student`` on ``train``, scored on ``test``, as ``kdcore run``
    would; returns ``(summary, student)``, the student trained in place.

    :param student: the model to train (its current weights are the starting point).
    :param teachers: a frozen, trained teacher, or ``{name: teacher}``; ``None`` trains the
        student alone (``vanilla``).
    :param train, test: ``(inputs, targets)`` tensors, or map-style ``Dataset``\\ s of
        ``(input, target)``; inputs are used as given (normalise them as the models expect).
    :param task: how outputs are scored (:class:`kdcore.ClassificationTask` by default, with
        ``num_classes`` classes, else the largest label + 1).
    :param config: everything else, as in a YAML config (a mapping or a file): ``trainer``,
        ``optimizer``, ``schedule``, ``data.batch_size``/``train_limit``..., ``output_dir``,
        ``algorithm``, and ``teachers: [{name, distill: [...]}]`` for where to distill (default:
        KD on the logits). Default: the default job's config (``kdcore run --print-config``).
    :param overrides: ``--set`` items, e.g. ``["trainer.epochs=2"]``.
    :param resume: a run directory of an earlier call to continue (``--resume``).
    :param log: where progress lines go.
    """
    from .engine.run import run
    from .plugins import get_plugins

    named = ({} if teachers is None else dict(teachers) if isinstance(teachers, Mapping)
             else {"teacher": teachers})
    for name, module in {"student": student, **named}.items():
        if not isinstance(module, nn.Module):
            raise UserError(f"{name}: expected a torch.nn.Module, got {type(module).__name__}")
    source = make_source(train, test, task, num_classes)
    if resume is not None:
        saved = os.path.join(os.fspath(resume), "config.yaml")
        if not os.path.isfile(saved):
            raise UserError(f"resume {resume}: no config.yaml there; is it a kdcore run directory?")
        data = read_yaml(saved)
    else:
        data = _run_config(_config_data(config), named)
    run_config = load_config(data, list(overrides))
    plugins = get_plugins()
    if PLUGIN in plugins.in_process:  # a call that did not return (a notebook cell stopped)
        plugins.unregister(PLUGIN)
    plugins.register(_Objects(student, list(named.values()), source), PLUGIN)
    try:
        run_dir = run(run_config, resume_dir=os.fspath(resume) if resume is not None else None, log=log)
    finally:
        plugins.unregister(PLUGIN)
    with open(os.path.join(run_dir, "summary.json"), encoding="utf-8") as f:
        summary = json.load(f)
    student.load_state_dict(torch.load(os.path.join(run_dir, "student.pt"), weights_only=True))
    return summary, student
