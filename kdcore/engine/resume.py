"""Resuming a run: what ``checkpoints/last.pt`` holds, and putting a killed run back exactly
where it stopped (weights, optimizer, schedule, loss scale, RNGs, position, metrics rows).

The teachers are not in it: they come from their own checkpoints, whose checksums it records.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable
from typing import Any

import attrs
import torch

from ..components.algorithm import is_teacher_state
from ..config import RunConfig, dump_yaml, load_config, read_yaml, unstructure
from ..errors import UserError
from .checkpoint import TEMP_NAME, load_checkpoint, write_text_atomic
from .loop import Position
from .optim import restore_optimizer

CHECKPOINT = os.path.join("checkpoints", "last.pt")
#: what to do about a damaged last.pt: it holds the whole training state, which no re-save makes
DAMAGED = "this run cannot be resumed from it; start a new run"


def metrics_rows(path: str) -> list[dict[str, Any]]:
    """The complete rows; a torn last line (power loss mid-append) is never covered by a
    checkpoint, so it is dropped rather than parsed."""
    if not os.path.exists(path):
        return []
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.endswith("\n"):
                break
            if line.strip():
                rows.append(json.loads(line))
    return rows


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def trainable_state(algorithm: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The algorithm's state without the frozen teachers (they come from their checkpoints)."""
    return {k: v for k, v in algorithm.state_dict().items() if not is_teacher_state(k)}


def run_state(algorithm: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
              scaler: torch.amp.GradScaler | None, position: Position, *, stages_done: bool,
              metrics_rows: int, checksums: dict[str, str]) -> dict[str, Any]:
    """What ``last.pt`` holds: everything a resumed run needs to continue bit for bit."""
    return {"format": 1, "algorithm": trainable_state(algorithm),
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "optimizer_type": type(optimizer).__name__,
            "grad_scaler": scaler.state_dict() if scaler is not None else None,
            "position": attrs.asdict(position), "rng": rng_state(), "stages_done": stages_done,
            "metrics_rows": metrics_rows, "teachers_sha256": checksums}


def restore(checkpoint_path: str, algorithm: Any, optimizer: torch.optim.Optimizer, scheduler: Any,
            checksums: dict[str, str], metrics_path: str | None,
            scaler: torch.amp.GradScaler | None = None) -> tuple[Position, bool]:
    """Load a run checkpoint into the built run; returns (position, stages_done). The teachers
    must be the ones the run started with. ``metrics.jsonl`` (rank 0 only: ``metrics_path``) is
    cut back to the rows the checkpoint covers: later ones belong to an epoch to be replayed."""
    state = load_checkpoint(checkpoint_path, what="resume checkpoint", remedy=DAMAGED)
    if not isinstance(state, dict) or state.get("format") != 1:
        raise UserError(f"resume checkpoint {checkpoint_path} is not a kdcore run checkpoint")
    for name, digest in state.get("teachers_sha256", {}).items():
        if checksums.get(name) != digest:
            raise UserError(f"resume checkpoint {checkpoint_path}: teacher {name!r} is not the one "
                            f"this run started with (its weights' sha256 was {digest[:12]}..., "
                            f"now {str(checksums.get(name))[:12]}...); resume with the same "
                            f"teacher or start a new run")
    try:
        missing = algorithm.load_state_dict(state["algorithm"], strict=False)
    except RuntimeError as exc:  # shapes differ: a connector or loss now built otherwise
        lines = [line.strip() for line in str(exc).splitlines() if "size mismatch" in line]
        raise UserError(f"resume checkpoint {checkpoint_path} does not fit the config: "
                        f"{lines[0] if lines else str(exc).splitlines()[0]}") from None
    if missing.unexpected_keys:
        raise UserError(f"resume checkpoint {checkpoint_path} does not fit the config: unexpected "
                        f"keys {missing.unexpected_keys[:4]}")
    saved_type = state.get("optimizer_type")
    if saved_type is not None and saved_type != type(optimizer).__name__:
        raise UserError(f"resume checkpoint {checkpoint_path}: the run started with optimizer "
                        f"{saved_type}, the config now says {type(optimizer).__name__}; its state "
                        f"does not carry over, so optimizer.type cannot change on resume")
    restore_optimizer(optimizer, scheduler, state["optimizer"], state["scheduler"])
    if scaler is not None and state.get("grad_scaler"):  # absent: an older or non-fp16 run
        scaler.load_state_dict(state["grad_scaler"])
    set_rng_state(state["rng"])
    if metrics_path is not None:
        rows = metrics_rows(metrics_path)[: state["metrics_rows"]]
        # atomically: a kill here must not leave the rows the checkpoint covers half-written
        write_text_atomic("".join(json.dumps(r) + "\n" for r in rows), metrics_path)
    return Position(**state["position"]), state["stages_done"]


def remove_partial_writes(run_dir: str) -> list[str]:
    """Delete the temporary files a killed run left mid-write in its own directory: only names
    kdcore's atomic writer gives them (:data:`~.checkpoint.TEMP_NAME`), so a user's own
    ``notes.tmp`` stays; returns their paths."""
    removed = []
    for folder in (run_dir, os.path.join(run_dir, "checkpoints")):
        if not os.path.isdir(folder):
            continue
        for name in os.listdir(folder):
            if TEMP_NAME.match(name):
                path = os.path.join(folder, name)
                os.unlink(path)
                removed.append(path)
    return removed


# What a resumed run may not change: what it trains on, which models, from which seed. The rest
# (trainer switches, epochs, optimizer and schedule settings, distill points' loss parameters)
# may change, and config.yaml then records it.
# Where files live may change (data moved, a checkpoint copied elsewhere): the teachers' weights
# are checked against the checksums the checkpoint recorded, and the student's come from it.
FIXED_ON_RESUME = ("seed", "data.", "student.", "teachers.", "algorithm.type", "distiller.type")
FREE_ON_RESUME = ("data.eval_batch_size", "data.test_limit", "data.root", "data.val_root",
                  "data.in_memory", "student.checkpoint")
FREE_IN_TEACHERS = ("distill", "expect_top1", "checkpoint")  # the rest makes the teacher


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in _flat(item, f"{prefix}{key}.").items()}
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return {k: v for i, item in enumerate(value) for k, v in _flat(item, f"{prefix}{i}.").items()}
    return {prefix[:-1]: value}


def _fixed(path: str) -> bool:
    if path in FREE_ON_RESUME or not (path + ".").startswith(FIXED_ON_RESUME):
        return False
    if path.startswith("teachers."):  # teachers.<i>.<key>...
        parts = path.split(".")
        return len(parts) < 3 or parts[2] not in FREE_IN_TEACHERS
    return True


def check_resume_changes(saved: RunConfig, config: RunConfig) -> None:
    """Refuse ``--resume`` overrides that would make the saved state belong to another run
    (other data, models or seed): found before any teacher is trained or loaded."""
    before, after = _flat(unstructure(saved)), _flat(unstructure(config))
    for i, (old, new) in enumerate(zip(saved.teachers, config.teachers)):
        if old.checkpoint and new.checkpoint:  # how it would be trained does not matter then
            for flat in (before, after):
                for path in [p for p in flat if p.startswith(f"teachers.{i}.train.")]:
                    del flat[path]
    for path in ("output_dir", "name"):
        if before.get(path) != after.get(path):
            raise UserError(f"--resume: {path} was {before.get(path)!r}, now {after.get(path)!r}; "
                            f"a resumed run continues in its own directory, so it cannot change")
    for path in sorted(set(before) | set(after)):
        if before.get(path) != after.get(path) and _fixed(path):
            raise UserError(f"--resume: {path} was {before.get(path)!r}, now {after.get(path)!r}; "
                            f"a resumed run keeps its data, models and seed, so start a new run "
                            f"for that (trainer, optimizer, schedule and loss settings may change)")


def finished(run_dir: str, epochs: int) -> bool:
    """Whether the run already trained ``epochs`` epochs and wrote its summary for them: then a
    resume has nothing to do (checked before any teacher is loaded or trained). A summary of an
    earlier, shorter length does not count: that run was extended since."""
    summary_path, checkpoint_path = os.path.join(run_dir, "summary.json"), os.path.join(run_dir, CHECKPOINT)
    if not (os.path.isfile(summary_path) and os.path.isfile(checkpoint_path)):
        return False
    try:
        with open(summary_path, encoding="utf-8") as f:
            summary_epochs = json.load(f).get("epochs")
    except (OSError, ValueError):
        return False
    state = load_checkpoint(checkpoint_path, what="resume checkpoint", remedy=DAMAGED)
    position = state.get("position", {}) if isinstance(state, dict) else {}
    return (summary_epochs == epochs == position.get("epoch") and position.get("step_in_epoch") == 0)


def keep_resumed_config(config: RunConfig, run_dir: str, log: Callable[[str], None]) -> None:
    """Overrides given with ``--resume`` become part of the run: ``config.yaml`` is rewritten to
    say how the run is trained (a later ``--resume`` keeps them), and the version it replaces is
    kept as ``config.yaml.N``."""
    path = os.path.join(run_dir, "config.yaml")
    text = dump_yaml(config)
    if not os.path.exists(path):  # resumed through the Python API from a bare folder
        write_text_atomic(text, path)
        return
    with open(path, encoding="utf-8") as f:
        previous = f.read()
    # compared as loaded: keys a newer kdcore added with their defaults are not overrides
    try:
        unchanged = dump_yaml(load_config(read_yaml(path), [])) == text
    except UserError:  # the saved file alone no longer validates: the overrides fix it
        unchanged = False
    if unchanged:
        return
    n = 1
    while os.path.exists(f"{path}.{n}"):
        n += 1
    write_text_atomic(previous, f"{path}.{n}")
    write_text_atomic(text, path)
    log(f"config.yaml now holds this resume's overrides; the one it replaces is config.yaml.{n}")
