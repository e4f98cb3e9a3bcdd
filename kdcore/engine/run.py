"""A whole run: data, teachers, stages, training, evaluation, checkpoints and the summary.

Run directory layout::

    <output_dir>/<name>-<timestamp>/
        config.yaml          the resolved config (what --resume reads back)
        metrics.jsonl        one row per epoch
        checkpoints/last.pt  full state for --resume (atomic)
        student.pt           the student's weights alone, for use elsewhere
        summary.json         final scores, written last
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Callable
from typing import Any

import attrs
import torch

from ..assemble import build_algorithm, build_model, load_data
from ..components.algorithm import is_teacher_state
from ..config import RunConfig, dump_yaml, load_config, read_yaml
from ..data.augment import build_augment
from ..errors import UserError
from .batches import TrainBatches
from .checkpoint import load_checkpoint, load_weights, save_atomic
from . import distributed
from .cpu import tune_cpu
from .evaluate import evaluate
from .loop import Position, describe_epoch, loss_scaler, run_stage, train_epochs
from .optim import make_optimizer, make_scheduler, restore_optimizer
from .fast_max_pool import use_fast_max_pool
from .frozen import fold_batchnorm, teacher_memory_format
from .teacher_cache import attach_teacher_cache
from .teachers import prepare_teachers, weights_checksum

CHECKPOINT = os.path.join("checkpoints", "last.pt")


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"config key trainer.device: {name!r} is not a device (use auto, cpu or cuda)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("config key trainer.device: cuda was asked for but no GPU is available; use cpu or auto")
    return device


def new_run_dir(config: RunConfig) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = os.path.join(config.output_dir, f"{config.name or config.algorithm.type}-{stamp}")
    path, n = base, 1
    while os.path.exists(path):
        n += 1
        path = f"{base}-{n}"
    os.makedirs(path)
    return path


def write_text_atomic(text: str, path: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json_atomic(obj: Any, path: str) -> None:
    write_text_atomic(json.dumps(obj, indent=2) + "\n", path)


def _metrics_rows(path: str) -> list[dict[str, Any]]:
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


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def speed_up(algorithm: Any, config: RunConfig, device: torch.device | None = None) -> None:
    """``trainer.channels_last``, the teachers' inference rewrites (:mod:`.frozen`), the CPU
    max-pooling kernel (:mod:`.fast_max_pool`) and ``trainer.compile``: same results within float
    rounding, faster where the hardware allows. ``Module.compile`` compiles in place, so module
    paths, taps and state_dict keys are unchanged."""
    if config.trainer.fast_max_pool:
        use_fast_max_pool(algorithm)
    if config.trainer.channels_last:
        algorithm.to(memory_format=torch.channels_last)
    if algorithm.distiller is not None:
        layout = teacher_memory_format(config.trainer.teacher_memory_format,
                                       device or next(algorithm.student.parameters()).device,
                                       config.trainer.channels_last)
        for teacher in algorithm.distiller.teachers.values():
            if config.trainer.teacher_fold_bn and getattr(algorithm, "fold_teacher_batchnorm", True):
                fold_batchnorm(teacher)
            teacher.to(memory_format=layout)
    if config.trainer.compile:
        backend = config.trainer.compile_backend
        algorithm.student.compile(backend=backend)
        if algorithm.distiller is not None:
            for teacher in algorithm.distiller.teachers.values():
                teacher.compile(backend=backend)


def check_assembly(config: RunConfig, splits: Any) -> None:
    """Build everything once on untrained teachers, so a wrong module path, parameter or shape
    is reported in seconds, before any teacher is trained. Shapes do not depend on weights."""
    with torch.random.fork_rng():
        teachers = {t.name: build_model(t, splits.source, f"teachers[{i}]")
                    for i, t in enumerate(config.teachers)}
        student = build_model(config.student, splits.source, "student")
        build_algorithm(config, splits, student, teachers).remove_taps()


def trainable_state(algorithm: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The algorithm's state without the frozen teachers (they come from their checkpoints)."""
    return {k: v for k, v in algorithm.state_dict().items() if not is_teacher_state(k)}


def restore(checkpoint_path: str, algorithm: Any, optimizer: torch.optim.Optimizer, scheduler: Any,
            checksums: dict[str, str], metrics_path: str | None,
            scaler: torch.amp.GradScaler | None = None) -> tuple[Position, bool]:
    """Load a run checkpoint into the built run; returns (position, stages_done). The teachers
    must be the ones the run started with. ``metrics.jsonl`` (rank 0 only: ``metrics_path``) is
    cut back to the rows the checkpoint covers: later ones belong to an epoch to be replayed."""
    state = load_checkpoint(checkpoint_path, what="resume checkpoint")
    if not isinstance(state, dict) or state.get("format") != 1:
        raise UserError(f"resume checkpoint {checkpoint_path} is not a kdcore run checkpoint")
    for name, digest in state.get("teachers_sha256", {}).items():
        if checksums.get(name) != digest:
            raise UserError(f"resume checkpoint {checkpoint_path}: teacher {name!r} is not the one "
                            f"this run started with (its weights' sha256 was {digest[:12]}..., "
                            f"now {str(checksums.get(name))[:12]}...); resume with the same "
                            f"teacher or start a new run")
    missing = algorithm.load_state_dict(state["algorithm"], strict=False)
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
    _set_rng_state(state["rng"])
    if metrics_path is not None:
        rows = _metrics_rows(metrics_path)[: state["metrics_rows"]]
        with open(metrics_path, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    return Position(**state["position"]), state["stages_done"]


def remove_partial_writes(run_dir: str) -> list[str]:
    """Delete the temporary files a killed run left mid-write in its own directory (atomic writes
    go through ``.tmp-*.pt`` and ``*.tmp`` files before their rename); returns their paths."""
    removed = []
    for folder in (run_dir, os.path.join(run_dir, "checkpoints")):
        if not os.path.isdir(folder):
            continue
        for name in os.listdir(folder):
            if (name.startswith(".tmp-") and name.endswith(".pt")) or name.endswith(".tmp"):
                path = os.path.join(folder, name)
                os.unlink(path)
                removed.append(path)
    return removed


def checked_groups(algorithm: Any) -> list[dict[str, Any]]:
    """``algorithm.parameter_groups()``, checked to hold every trainable parameter once."""
    groups = [{**g, "params": list(g["params"])} for g in algorithm.parameter_groups()]  # generators once
    seen = [id(p) for g in groups for p in g["params"]]
    trainable = {id(p) for p in algorithm.trainable_parameters()}
    if len(seen) != len(set(seen)) or set(seen) != trainable:
        names = {id(p): n for n, p in algorithm.named_parameters()}
        missing = [names.get(i, "?") for i in trainable - set(seen)][:3]
        extra = [names.get(i, "?") for i in set(seen) - trainable][:3]
        repeated = sorted({names.get(i, "?") for i in seen if seen.count(i) > 1})[:3]
        raise UserError(f"algorithm {type(algorithm).__name__}: parameter_groups() must hold every "
                        f"trainable parameter exactly once (missing {missing}, not trainable "
                        f"{extra}, repeated {repeated})")
    return groups


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


def run(config: RunConfig, *, resume_dir: str | None = None,
        log: Callable[[str], None] = print) -> str:
    """Train as configured; returns the run directory ("" on ranks other than 0 under torchrun)."""
    try:
        return _run(config, resume_dir, log)
    finally:
        distributed.teardown()


def _run(config: RunConfig, resume_dir: str | None, log: Callable[[str], None]) -> str:
    random.seed(config.seed)
    torch.manual_seed(config.seed)
    device = distributed.setup(config.trainer.device) or pick_device(config.trainer.device)
    if config.trainer.sync_batchnorm:
        distributed.check_sync_batchnorm(device)
    main = distributed.is_main()
    if not main:
        log = lambda message: None  # noqa: E731 - rank 0 speaks for all
        config.trainer.progress = False
    if device.type == "cpu" and config.trainer.cpu_tuning:
        tune_cpu(config.trainer.threads)
    splits = load_data(config.data)
    augment = build_augment(config.data.augment)  # checked now, before any teacher trains
    distributed.check_batch(config.data.batch_size)
    run_dir = distributed.broadcast(resume_dir or (new_run_dir(config) if main else None))
    if resume_dir is None and main:
        write_text_atomic(dump_yaml(config), os.path.join(run_dir, "config.yaml"))
    log(f"run dir: {run_dir}")
    started = time.perf_counter()

    check_assembly(config, splits)
    teachers = prepare_teachers(config, splits, device, log)
    checksums = {name: weights_checksum(t["model"]) for name, t in teachers.items()}
    for t in teachers.values():  # as trained, before speed_up folds BatchNorms into convolutions
        t["params"] = sum(p.numel() for p in t["model"].parameters())
    torch.manual_seed(config.seed)  # the student's init must not depend on teacher caching
    student = build_model(config.student, splits.source, "student")
    if config.student.checkpoint:
        load_weights(student, os.path.expanduser(config.student.checkpoint), what="student.checkpoint")
    algorithm = build_algorithm(config, splits, student, {n: t["model"] for n, t in teachers.items()},
                                run_dir=run_dir)
    algorithm.to(device)
    if config.trainer.sync_batchnorm:
        converted = distributed.use_sync_batchnorm(algorithm, device)
        if converted:
            log(f"trainer.sync_batchnorm: {converted} BatchNorm layers synchronised across "
                f"{distributed.world_size()} processes")
    speed_up(algorithm, config, device)
    for t in teachers.values():  # the weights as they run: they must not change from here on
        t["running_sha256"] = weights_checksum(t["model"])

    batches = algorithm.train_batches(
        TrainBatches(splits.student_train, config.data.batch_size, config.seed, device=device,
                     channels_last=config.trainer.channels_last, rank=distributed.rank(),
                     world=distributed.world_size(), augment=augment))
    if len(batches) == 0:
        raise UserError(f"config key data.batch_size: {config.data.batch_size} leaves no batch")
    if config.trainer.teacher_cache and augment is not None:
        raise UserError("trainer.teacher_cache: data.augment draws new random crops and flips every "
                        "epoch, so the teacher's outputs change with them and cannot be cached; drop "
                        "one of the two")
    if config.trainer.teacher_cache and algorithm.distiller is not None:
        attach_teacher_cache(algorithm.distiller, batches.data if hasattr(batches, "data") else None,
                             {n: t["checkpoint"] for n, t in teachers.items()}, device,
                             batch_size=config.data.eval_batch_size,
                             progress=config.trainer.progress, log=log)
    optimizer = make_optimizer(checked_groups(algorithm), config.optimizer)
    scheduler = make_scheduler(optimizer, config.schedule, len(batches), config.trainer.epochs)
    position = Position()
    stages_done = False
    metrics_path = os.path.join(run_dir, "metrics.jsonl")
    checkpoint_path = os.path.join(run_dir, CHECKPOINT)
    scaler = loss_scaler(config.trainer.amp, device)

    if resume_dir is not None and os.path.exists(checkpoint_path):
        position, stages_done = restore(checkpoint_path, algorithm, optimizer, scheduler, checksums,
                                        metrics_path if main else None, scaler)
        log(f"resumed at epoch {position.epoch + 1}, step {position.step_in_epoch} from {checkpoint_path}")
    if resume_dir is not None and main:  # after the checks: a refused resume changes nothing
        keep_resumed_config(config, run_dir, log)
        remove_partial_writes(run_dir)
    rows_written = [len(_metrics_rows(metrics_path)) if main else 0]  # counted once, then in memory

    def save(stages: bool) -> None:
        if not main:
            return
        save_atomic({"format": 1, "algorithm": trainable_state(algorithm),
                     "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                     "optimizer_type": type(optimizer).__name__,
                     "grad_scaler": scaler.state_dict() if scaler is not None else None,
                     "position": attrs.asdict(position), "rng": _rng_state(), "stages_done": stages,
                     "metrics_rows": rows_written[0],
                     "teachers_sha256": checksums}, checkpoint_path)

    try:
        if not stages_done:
            for point, stage in algorithm.stages():
                if stage.epochs > 0:
                    log(f"stage {stage.name} ({point}): {stage.epochs} epochs")
                    history = run_stage(algorithm, point, stage, batches, progress=config.trainer.progress,
                                        on_nonfinite=config.trainer.on_nonfinite)
                    log(f"stage {stage.name}: " + ", ".join(f"{k} {v:.4f}" for k, v in history.items()))
            stages_done = True
            save(True)

        evaluation = splits.evaluation

        def score() -> dict[str, dict[str, dict[str, float]]]:
            return {name: {split: evaluate(model, data, splits.source.task,
                                           batch_size=config.data.eval_batch_size, device=device)
                           for split, data in evaluation.items()}
                    for name, model in algorithm.evaluation_models().items()}

        def on_epoch_end(pos: Position, train: dict[str, float]) -> None:
            if not main:  # the others move on and wait for rank 0 at the next step's all-reduce
                return
            scores = score()
            row = {"epoch": pos.epoch, "lr": optimizer.param_groups[0]["lr"], "train": train, **scores}
            if len(optimizer.param_groups) > 1:  # Algorithm.parameter_groups() with lr_scale
                row["lr_groups"] = [group["lr"] for group in optimizer.param_groups]
            with open(metrics_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
            rows_written[0] += 1
            shown = {f"{m} {s} top1" if len(scores) > 1 else f"{s} top1": v["top1"]
                     for m, by_split in scores.items() for s, v in by_split.items() if "top1" in v}
            log(describe_epoch(pos.epoch, config.trainer.epochs, train, shown))
            save(True)

        def on_step(pos: Position) -> None:
            every = config.trainer.checkpoint_every
            if every and pos.global_step % every == 0 and pos.step_in_epoch < len(batches):
                save(True)

        train_epochs(algorithm, batches, optimizer, scheduler, epochs=config.trainer.epochs,
                     position=position, on_nonfinite=config.trainer.on_nonfinite,
                     grad_clip=config.trainer.grad_clip, progress=config.trainer.progress,
                     amp=config.trainer.amp, scaler=scaler, step_module=distributed.wrap(algorithm, device),
                     reduce=distributed.reduce_sums, on_step=on_step, on_epoch_end=on_epoch_end)
    finally:
        algorithm.remove_taps()

    distributed.barrier()
    if not main:
        return ""

    summary = summarize(config, algorithm, splits, teachers, checksums, metrics_path, device,
                        time.perf_counter() - started, run_dir)
    exported = next(iter(algorithm.evaluation_models().values()))
    save_atomic(exported.state_dict(), os.path.join(run_dir, "student.pt"))
    write_json_atomic(summary, os.path.join(run_dir, "summary.json"))
    return run_dir


def summarize(config: RunConfig, algorithm: Any, splits: Any, teachers: dict[str, dict[str, Any]],
              checksums: dict[str, str], metrics_path: str, device: torch.device,
              seconds: float, run_dir: str) -> dict[str, Any]:
    rows = _metrics_rows(metrics_path)
    models = algorithm.evaluation_models()
    first = next(iter(models))
    task = splits.source.task
    final = evaluate(models[first], splits.test, task, batch_size=config.data.eval_batch_size, device=device)
    student: dict[str, Any] = {**final, "params": sum(p.numel() for p in models[first].parameters())}
    key = "val" if splits.val is not None else "test"
    history = [(r["epoch"], r[first][key]["top1"]) for r in rows if first in r and "top1" in r[first][key]]
    if history:
        best_epoch, best = max(history, key=lambda x: x[1])
        student.update({"best_epoch": best_epoch, f"best_{key}_top1": best})
        if splits.val is not None:
            student["val_top1"] = history[-1][1]
    summary: dict[str, Any] = {"algo": config.algorithm.type, "student": student,
                               "epochs": config.trainer.epochs, "seconds": round(seconds, 2),
                               "run_dir": run_dir, "device": str(device),
                               "train_images": len(splits.train),
                               "labelled_images": config.data.labelled or len(splits.train)}
    for name, model in models.items():
        if name != first:
            summary.setdefault("exits", {})[name] = evaluate(
                model, splits.test, task, batch_size=config.data.eval_batch_size, device=device)
    per_teacher = {}
    for name, info in teachers.items():
        model = info["model"]
        if weights_checksum(model) != info["running_sha256"]:
            raise RuntimeError(f"teacher {name!r} weights changed during the run; this is a bug")
        per_teacher[name] = {**evaluate(model, splits.test, task, batch_size=config.data.eval_batch_size,
                                        device=device),
                             "params": info["params"], "checkpoint": info["checkpoint"],
                             "sha256": checksums[name]}
    if per_teacher:
        summary["teacher"] = next(iter(per_teacher.values()))
        summary["teachers"] = per_teacher
    return summary
