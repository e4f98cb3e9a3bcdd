"""A finished run directory read back as models: what commands that use a run's result (such as
``kdcore export`` and ``kdcore draw``, both plugins) and scripts load, rebuilt the way the run
built them."""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from torch import nn

from .errors import UserError


def _config(run_dir: str) -> Any:
    """The run's ``config.yaml``, with its ``type: import`` folders put on ``sys.path``."""
    from .config import load_config, read_yaml
    from .models.imported import use_import_paths

    saved = os.path.join(run_dir, "config.yaml")
    if not os.path.isfile(saved):
        raise UserError(f"{run_dir}: no config.yaml there; is it a kdcore run directory?")
    config = load_config(read_yaml(saved))
    use_import_paths(config.import_paths)
    return config


def load_run_student(run_dir: str, splits: Any = None) -> tuple[Any, Any, nn.Module]:
    """``(config, splits, student)`` of a finished run: its ``config.yaml``'s student with
    ``student.pt`` loaded, ``type: import`` models found through the run's ``import_paths``.
    ``splits`` (the run's data, already loaded) saves loading it again."""
    from .assemble import build_model, load_data
    from .engine.checkpoint import load_weights

    weights = os.path.join(run_dir, "student.pt")
    config = _config(run_dir)
    if not os.path.isfile(weights):
        raise UserError(f"{weights} does not exist: the run has not finished (kdcore run --resume "
                        f"{run_dir} finishes it)")
    if config.student.type.startswith("api:"):
        raise UserError(f"{run_dir}: its student came from kdcore.distill (a Python object); load "
                        f"it from Python (kdcore_plugin_export.export.export_model(student, inputs, "
                        f"FORMAT, PATH), from kdcore-plugin-export)")
    splits = splits if splits is not None else load_data(config.data)
    model = build_model(config.student, splits.source, "student")
    load_weights(model, weights, what="student.pt")
    return config, splits, model


def load_run_teacher(run_dir: str, splits: Any = None,
                     config: Any = None) -> tuple[Any, Any, nn.Module | None]:
    """``(config, splits, teacher)`` of a finished run: its first teacher (``teachers[0]``) with
    the checkpoint ``summary.json`` names loaded. ``teacher`` is ``None`` when the run had none,
    or when that checkpoint is gone (a teacher trained by the run lives in the cache, which may
    have been cleared since)."""
    from .assemble import build_model, load_data
    from .engine.checkpoint import load_weights

    config = config if config is not None else _config(run_dir)  # as load_run_student read it
    path = os.path.join(run_dir, "summary.json")
    if not os.path.isfile(path):
        raise UserError(f"{run_dir}: no summary.json; the run has not finished (kdcore run "
                        f"--resume {run_dir} finishes it)")
    with open(path, encoding="utf-8") as f:
        checkpoint = (json.load(f).get("teacher") or {}).get("checkpoint") or ""
    splits = splits if splits is not None else load_data(config.data)
    if not config.teachers or not os.path.isfile(checkpoint):
        return config, splits, None
    model = build_model(config.teachers[0], splits.source, "teachers[0]")
    load_weights(model, checkpoint, what="teacher checkpoint")
    return config, splits, model


def first_test_samples(test: Any, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` (inputs, targets) of a test split, in-memory or a torch ``Dataset``: what
    a finished run's student is checked or drawn on."""
    from .data import TensorSplit

    if isinstance(test, TensorSplit):
        return test.inputs[:n], test.targets[:n]
    pairs = [test[i] for i in range(min(n, len(test)))]
    return torch.stack([p[0] for p in pairs]), torch.stack([torch.as_tensor(p[1]) for p in pairs])
