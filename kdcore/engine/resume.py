"""Resuming a run: what ``checkpoints/last.pt`` holds, and putting a killed run back exactly
where it stopped (weights, optimizer, schedule, loss scale, RNGs, position, metrics rows).

The teachers are not in it: they come from their own checkpoints, whose checksums it records.
"""

from __future__ import annotations

import itertools
import json
import os
import random
from collections.abc import Callable
from typing import Any

import attrs
import torch
import yaml

from ..components.algorithm import is_teacher_state
from ..config import ConfigDumper, RunConfig, dump_yaml, flatten, load_config, read_yaml, shown, unstructure
from ..errors import UserError
from .checkpoint import TEMP_NAME, load_checkpoint, state_dict_of, write_text_atomic
from .loop import ENGINE_OPTIMIZER, TrainingState, nonfinite_tensors
from .optim import restore_optimizer

CHECKPOINT = os.path.join("checkpoints", "last.pt")
#: what to do about a damaged last.pt: it holds the whole training state, which no re-save makes
DAMAGED = "this run cannot be resumed from it; start a new run"
#: what becomes of a damaged student.pt of a finished run: not re-saved by hand (it is the run's
#: own output), exported again from last.pt by this resume
STUDENT_REMEDY = f"it is this run's own output, so it is written again from {CHECKPOINT}"


#: what to do about a damaged metrics.jsonl
METRICS_REMEDY = ("put the file back as kdcore wrote it (a copy, a backup), or start a new run; "
                  "rows after the last checkpoint's are dropped on --resume anyway")


def metrics_lines(path: str) -> list[str]:
    """The complete lines of ``metrics.jsonl`` (newline included); a torn last line (power loss
    mid-append) is never covered by a checkpoint, so it is dropped rather than read."""
    if not os.path.lexists(path):
        return []
    try:
        with open(path, "rb") as f:
            data = f.read()
    except IsADirectoryError:
        raise UserError(f"{path} is a directory, not the run's metrics file; move it away "
                        f"(the run's rows are lost with it: start a new run)") from None
    except OSError as exc:
        raise UserError(f"{path} cannot be read ({exc.strerror})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise UserError(f"{path} line {line} is not text (binary damage); {METRICS_REMEDY}") from None
    return [line + "\n" for line in text.split("\n")[:-1] if line.strip()]  # [:-1]: the torn end


def metrics_rows(path: str) -> list[dict[str, Any]]:
    """The complete rows, each checked to be a row kdcore wrote: a JSON object with an integer
    ``epoch`` (what the summary reads)."""
    rows = []
    for number, line in enumerate(metrics_lines(path), start=1):
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if not isinstance(row, dict) or type(row.get("epoch")) is not int:  # bool is no epoch
            what = "has no integer 'epoch'" if isinstance(row, dict) else "is not a JSON object"
            raise UserError(f"{path} line {number} {what}, so it is not a row kdcore wrote "
                            f"({shown(line.strip(), 60)}); {METRICS_REMEDY}")
        rows.append(row)
    return rows


def rows_as_recorded(metrics_path: str, recorded: list[str], log: Callable[[str], None]) -> list[str]:
    """The rows ``last.pt`` covers, as it recorded them (``metrics``): rows of ``metrics.jsonl``
    that differ (edited, damaged, deleted, the file unreadable) are written again from the
    record and said, so an edited number never becomes the summary's best value and a damaged
    file does not end the run."""
    wanted = [line + "\n" for line in recorded]
    try:
        found = metrics_lines(metrics_path)[: len(wanted)]
    except UserError:
        if os.path.isdir(metrics_path):  # not ours to remove
            raise
        found = []
    differ = [i + 1 for i, line in enumerate(wanted) if i >= len(found) or found[i] != line]
    if differ:
        rows = ", ".join(map(str, differ[:5])) + (", ..." if len(differ) > 5 else "")
        log(f"metrics.jsonl: row{'s' if len(differ) > 1 else ''} {rows} differed from what "
            f"{CHECKPOINT} recorded (edited, damaged or deleted); written again from its record")
    return wanted


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


def optimizers_state(optimizers: dict[str, torch.optim.Optimizer],
                     schedulers: dict[str, Any]) -> dict[str, Any]:
    """The optimizers' and schedules' part of ``last.pt``: the engine's one as ``optimizer`` and
    ``scheduler`` (as every kdcore wrote it), an own-step algorithm's under ``optimizers`` and
    ``schedulers`` by name."""
    if list(optimizers) == [ENGINE_OPTIMIZER]:
        return {"optimizer": optimizers[ENGINE_OPTIMIZER].state_dict(),
                "scheduler": schedulers[ENGINE_OPTIMIZER].state_dict()}
    return {"optimizers": {name: o.state_dict() for name, o in optimizers.items()},
            "schedulers": {name: s.state_dict() for name, s in schedulers.items()}}


def restore_optimizers(checkpoint_path: str, optimizers: dict[str, torch.optim.Optimizer],
                       schedulers: dict[str, Any], state: dict[str, Any]) -> None:
    """Load every optimizer and schedule of ``state`` (:func:`optimizers_state`) by name."""
    saved, schedules = state.get("optimizers"), state.get("schedulers")
    if saved is None:  # the engine's one optimizer
        saved, schedules = {ENGINE_OPTIMIZER: state["optimizer"]}, {ENGINE_OPTIMIZER: state["scheduler"]}
    if set(saved) != set(optimizers):
        def names(found: dict[str, Any]) -> str:
            return "the engine's one" if list(found) == [ENGINE_OPTIMIZER] else ", ".join(map(repr, found))
        raise UserError(f"resume checkpoint {checkpoint_path}: it holds the optimizers "
                        f"{names(saved)}, the algorithm now has {names(optimizers)}; their state "
                        f"does not carry over, so start a new run")
    for name, optimizer in optimizers.items():
        restore_optimizer(optimizer, schedulers[name], saved[name], schedules[name])


def run_state(algorithm: torch.nn.Module, optimizers: dict[str, torch.optim.Optimizer],
              schedulers: dict[str, Any], scaler: torch.amp.GradScaler | None,
              position: TrainingState, *, stages_done: bool,
              checksums: dict[str, str], metrics: list[str], config: RunConfig) -> dict[str, Any]:
    """What ``last.pt`` holds: everything a resumed run needs to continue bit for bit, plus
    what checks a resume: the metrics rows it covers as written (a few hundred bytes an epoch),
    and the config the run trained with. ``optimizers`` and ``schedulers`` by name
    (:data:`ENGINE_OPTIMIZER` alone on the default path)."""
    return {"format": 1, "algorithm": trainable_state(algorithm),
            "metrics": list(metrics), "config": unstructure(config),
            **optimizers_state(optimizers, schedulers),
            "optimizer_type": type(next(iter(optimizers.values()))).__name__,
            "grad_scaler": scaler.state_dict() if scaler is not None else None,
            "position": attrs.asdict(position), "rng": rng_state(), "stages_done": stages_done,
            "metrics_rows": len(metrics), "teachers_sha256": checksums}


def restore(checkpoint_path: str, algorithm: Any, optimizers: dict[str, torch.optim.Optimizer],
            schedulers: dict[str, Any], checksums: dict[str, str], metrics_path: str | None,
            scaler: torch.amp.GradScaler | None = None, log: Callable[[str], None] = lambda message: None,
            *, state: dict[str, Any]) -> tuple[TrainingState, bool]:
    """Load ``state`` (last.pt as :func:`load_last` read it) into the built run; returns
    (position, stages_done). The teachers must be the ones the run started with.
    ``metrics.jsonl`` (rank 0 only: ``metrics_path``) is cut back to the rows the checkpoint
    covers (later ones belong to an epoch to be replayed), and those rows are checked against
    the checkpoint's record of them (:func:`rows_as_recorded`)."""
    for name, digest in state["teachers_sha256"].items():
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
    saved_type, now = state["optimizer_type"], type(next(iter(optimizers.values()))).__name__
    if saved_type != now:
        raise UserError(f"resume checkpoint {checkpoint_path}: the run started with optimizer "
                        f"{saved_type}, the config now says {now}; its state "
                        f"does not carry over, so optimizer.type cannot change on resume")
    restore_optimizers(checkpoint_path, optimizers, schedulers, state)
    if scaler is not None and state["grad_scaler"] is not None:  # None: saved without fp16 scaling
        scaler.load_state_dict(state["grad_scaler"])
    set_rng_state(state["rng"])
    if metrics_path is not None:
        lines = rows_as_recorded(metrics_path, state["metrics"][: state["metrics_rows"]], log)
        # atomically: a kill here must not leave the rows the checkpoint covers half-written
        write_text_atomic("".join(lines), metrics_path)
    return TrainingState(**state["position"]), state["stages_done"]


def remove_partial_writes(run_dir: str) -> None:
    """Delete the temporary files a killed run left mid-write in its own directory: only names
    kdcore's atomic writer gives them (:data:`~.checkpoint.TEMP_NAME`), so a user's own
    ``notes.tmp`` stays."""
    for folder in (run_dir, os.path.join(run_dir, "checkpoints")):
        for name in os.listdir(folder) if os.path.isdir(folder) else []:
            if TEMP_NAME.match(name):
                os.unlink(os.path.join(folder, name))


# What a resumed run may not change: what it trains on, which models, from which seed. The rest
# (trainer switches, epochs, optimizer and schedule settings, distill points' loss parameters)
# may change, and config.yaml then records it.
# Where files live may change (data moved, a checkpoint copied elsewhere): the teachers' weights
# are checked against the checksums the checkpoint recorded, and the student's come from it.
FIXED_ON_RESUME = ("seed", "data.", "student.", "teachers.", "algorithm.type", "distiller.type")
FREE_ON_RESUME = ("data.eval_batch_size", "data.test_limit", "data.root", "data.val_root",
                  "data.in_memory", "student.checkpoint")
FREE_IN_TEACHERS = ("distill", "expect_top1", "expect_metric", "checkpoint")  # the rest makes the teacher


def _fixed(path: str) -> bool:
    if path in FREE_ON_RESUME or not (path + ".").startswith(FIXED_ON_RESUME):
        return False
    if path.startswith("teachers."):  # teachers.<i>.<key>...
        parts = path.split(".")
        return len(parts) < 3 or parts[2] not in FREE_IN_TEACHERS
    return True


def check_resume_changes(saved: RunConfig, config: RunConfig, *, how: str = "--resume") -> None:
    """Refuse ``--resume`` overrides that would make the saved state belong to another run
    (other data, models or seed): found before any teacher is trained or loaded. ``how`` says
    where the change came from (overrides, or config.yaml edited since the checkpoint)."""
    before, after = flatten(unstructure(saved)), flatten(unstructure(config))
    for i, (old, new) in enumerate(zip(saved.teachers, config.teachers)):
        if old.checkpoint and new.checkpoint:  # how it would be trained does not matter then
            for flat in (before, after):
                for path in [p for p in flat if p.startswith(f"teachers.{i}.train.")]:
                    del flat[path]
    for path in ("output_dir", "name"):
        if before.get(path) != after.get(path):
            raise UserError(f"{how}: {path} was {shown(before.get(path))}, now "
                            f"{shown(after.get(path))}; a resumed run continues in its own "
                            f"directory, so it cannot change")
    for path in sorted(set(before) | set(after)):
        if before.get(path) != after.get(path) and _fixed(path):
            raise UserError(f"{how}: {path} was {shown(before.get(path))}, now "
                            f"{shown(after.get(path))}; a resumed run keeps its data, models and "
                            f"seed, so start a new run for that (trainer, optimizer, schedule and "
                            f"loss settings may change)")


def load_last(run_dir: str) -> dict[str, Any] | None:
    """``last.pt`` of ``run_dir`` as loaded, once per resume, and checked to be a run checkpoint
    this kdcore resumes: the resume's checks (the config it was trained with, :func:`finished`)
    and :func:`restore` read this (``None``: there is no such file)."""
    path = os.path.join(run_dir, CHECKPOINT)
    if not os.path.isfile(path):
        return None
    state = load_checkpoint(path, what="resume checkpoint", remedy=DAMAGED)
    if not isinstance(state, dict) or state.get("format") != 1:
        raise UserError(f"resume checkpoint {path} is not a kdcore run checkpoint")
    if "metrics" not in state:  # 0.1.7 added the record of the rows and the config
        raise UserError(f"resume checkpoint {path} was written by kdcore 0.1.6 or older, which "
                        f"this kdcore does not resume; finish the run with that version, or "
                        f"start a new run")
    return state


def config_changes(trained: dict[str, Any], config: RunConfig) -> list[str]:
    """``key old -> new`` for every key whose value differs from the checkpoint's config (keys a
    newer kdcore added are not changes)."""
    before, after = flatten(trained), flatten(unstructure(config))
    return [f"{path} {shown(before[path])} -> {shown(after.get(path))}"
            for path in sorted(before) if path in after and before[path] != after[path]]


def check_resumable(run_dir: str, last: dict[str, Any] | None) -> None:
    """Refuse a resume that would write a second history over the first: ``metrics.jsonl`` holds
    rows but there is no ``last.pt`` (``last``: as :func:`load_last` read it), which says where
    they end (the run would start over and append epoch 1 again)."""
    if last is not None:
        return
    rows = len(metrics_lines(os.path.join(run_dir, "metrics.jsonl")))
    if rows:
        raise UserError(f"--resume {run_dir}: {CHECKPOINT} is missing but metrics.jsonl has {rows} "
                        f"row{'s' if rows != 1 else ''}, so the run cannot go on from where they "
                        f"end; to train this run dir again from the start, move metrics.jsonl "
                        f"aside first (e.g. to metrics.jsonl.old), or start a new run")


def finished(run_dir: str, epochs: int, last: Any, log: Callable[[str], None] = print) -> bool:
    """Whether the run already trained ``epochs`` epochs and wrote its summary for them: then a
    resume has nothing to do (checked before any teacher is loaded or trained). A summary of an
    earlier, shorter length does not count: that run was extended since. ``last``: last.pt as
    :func:`load_last` read it."""
    summary_path = os.path.join(run_dir, "summary.json")
    if not (os.path.isfile(summary_path) and last is not None):
        return False
    try:
        with open(summary_path, encoding="utf-8") as f:
            summary_epochs = json.load(f).get("epochs")
    except (OSError, ValueError):
        return False
    position = last["position"]
    if not (summary_epochs == epochs == position.get("epoch") and position.get("step_in_epoch") == 0):
        return False
    student_path = os.path.join(run_dir, "student.pt")
    try:  # the run's product: a damaged one is exported again from last.pt, not reported done
        weights = load_checkpoint(student_path, what="student.pt", remedy=STUDENT_REMEDY)
        broken = nonfinite_tensors(state_dict_of(weights, student_path))
        problem = f"holds NaN/Inf ({', '.join(broken[:3])})" if broken else ""
    except UserError as exc:
        problem = str(exc).removeprefix(f"student.pt {student_path} ")
    if problem:
        ending = "" if STUDENT_REMEDY in problem else f"; {STUDENT_REMEDY}"
        log(f"the run is complete, but student.pt {problem}{ending}")
        return False
    return True


def keep_resumed_config(config: RunConfig, run_dir: str, log: Callable[[str], None],
                        last: dict[str, Any] | None) -> None:
    """Overrides given with ``--resume`` become part of the run: ``config.yaml`` is rewritten to
    say how the run is trained (a later ``--resume`` keeps them), and the version it replaces is
    kept as ``config.yaml.N``. ``last``: last.pt as :func:`load_last` read it (None: there is
    none); a ``config.yaml`` edited by hand since it was written is said key by key, and the
    config it was trained with is kept as ``config.yaml.N`` (the run dir then records every
    config each part trained with)."""
    path = os.path.join(run_dir, "config.yaml")
    text = dump_yaml(config)
    trained = last["config"] if last is not None else None
    changes = config_changes(trained, config) if trained is not None else []
    for change in changes:
        log(f"config changed since {CHECKPOINT}: {change}")
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
    n = next(i for i in itertools.count(1) if not os.path.exists(f"{path}.{i}"))  # the first free
    if unchanged:
        if changes:  # edited by hand: keep what the checkpoint was trained with
            write_text_atomic(yaml.dump(trained, Dumper=ConfigDumper, sort_keys=False), f"{path}.{n}")
            log(f"config.yaml was edited since {CHECKPOINT} was written; the config it was "
                f"trained with is kept as config.yaml.{n}")
        return
    write_text_atomic(previous, f"{path}.{n}")
    write_text_atomic(text, path)
    log(f"config.yaml now holds this resume's overrides; the one it replaces is config.yaml.{n}")
