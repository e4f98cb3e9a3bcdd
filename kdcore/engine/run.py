"""A whole run: data, teachers, stages, training, evaluation, checkpoints and the summary.

Read :func:`_run` first: it calls the run's steps in order, each a function below it;
:class:`Training` is the student's training and what it writes as it goes (the loop's callbacks).

Run directory layout::

    <output_dir>/<name>-<timestamp>/
        config.yaml          the resolved config (what --resume reads back)
        metrics.jsonl        one row per epoch
        checkpoints/last.pt  full state for --resume (atomic)
        student.pt           the student's weights alone, for use elsewhere
        summary.json         final scores, written last
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import torch

from ..assemble import build_algorithm, build_model, check_takes_inputs, load_data, sample_inputs
from ..callbacks import build_callbacks, call_each
from ..config import RunConfig, dump_yaml, read_yaml, structure
from ..data.augment import build_augment
from ..errors import UserError
from ..loggers import Loggers, open_loggers
from ..models.imported import use_import_paths
from ..precheck import check_components
from ..task import headline
from . import distributed
from .batches import TrainBatches
from .checkpoint import (
    DISK_FULL,
    RUN_LOCK,
    disk_full,
    load_weights,
    run_lock,
    save_atomic,
    write_json_atomic,
    write_safetensors,
    write_text_atomic,
)
from .cpu import tune_cpu
from .evaluate import evaluate
from .frozen import fold_batchnorm, teacher_memory_format
from .transforms import apply_transforms, build_transforms
from .loop import (
    BROKEN_HINT,
    ENGINE_OPTIMIZER,
    LoopSettings,
    NonFiniteLoss,
    TrainingState,
    check_holds_each_once,
    checked_own_optimizers,
    describe_epoch,
    loss_scaler,
    nonfinite_tensors,
    run_stage,
    train_epochs,
)
from .optim import make_optimizer, make_scheduler
from .resume import (
    CHECKPOINT,
    check_resumable,
    check_resume_changes,
    finished,
    keep_resumed_config,
    load_last,
    metrics_lines,
    metrics_rows,
    remove_partial_writes,
    restore,
    run_state,
    trainable_state,
)
from .teachers import Teacher, prepare_teachers, teacher_data, weights_checksum


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
    while True:
        try:
            os.makedirs(path)
            return path
        except FileExistsError:  # taken (another run started this second): the next suffix
            n += 1
            path = f"{base}-{n}"
        except (NotADirectoryError, PermissionError) as exc:
            what = "is a file or lies under one" if isinstance(exc, NotADirectoryError) else "cannot be written to"
            raise UserError(f"config key output_dir: {config.output_dir} {what}; pass another "
                            f"folder (--output-dir DIR)") from None


def check_batch_sizes(config: RunConfig, splits: Any) -> None:
    """A batch larger than its training split would be cut to the split (one step an epoch, a
    teacher trained on one batch): refused, before any teacher is trained. An empty split is
    data-free distillation's (its algorithm makes the batches), checked where batches are made."""
    if 0 < len(splits.student_train) < config.data.batch_size:
        raise UserError(f"config key data.batch_size: {config.data.batch_size} is larger than the "
                        f"student's training split ({len(splits.student_train)} images); use at "
                        f"most {len(splits.student_train)}")
    for i, tcfg in enumerate(config.teachers):
        images = len(teacher_data(tcfg, splits))
        if not tcfg.checkpoint and 0 < images < tcfg.train.batch_size:
            raise UserError(f"config key teachers[{i}].train.batch_size: {tcfg.train.batch_size} "
                            f"is larger than the teacher's training split ({images} images); use "
                            f"at most {images}")


def check_run_dir(run_dir: str) -> None:
    """Before each write into the run dir: one removed mid-run (or its config.yaml) is not
    recreated piecemeal, which would leave a folder that cannot be resumed."""
    if not os.path.isfile(os.path.join(run_dir, "config.yaml")):
        gone = "was removed" if not os.path.isdir(run_dir) else "lost its config.yaml"
        raise UserError(f"run dir {run_dir} {gone} while the run was going; stopped without "
                        f"writing there again (start a new run)")


def speed_up(algorithm: Any, config: RunConfig, device: torch.device,
             log: Callable[[str], None] | None = None) -> None:
    """``trainer.channels_last``, the teachers' inference rewrites (:mod:`.frozen`), the plugins'
    ``trainer.model_transforms`` and ``trainer.compile``: same results within float rounding,
    faster where the hardware allows. ``Module.compile`` compiles in place, so module paths, taps
    and state_dict keys are unchanged."""
    trainer = config.trainer
    teachers = list(algorithm.distiller.teachers.values()) if algorithm.distiller is not None else []
    transforms = build_transforms(trainer.model_transforms)
    apply_transforms(transforms, algorithm.student, "student", log)
    for teacher in teachers:
        apply_transforms(transforms, teacher, "teacher", log)
    if trainer.channels_last:
        algorithm.to(memory_format=torch.channels_last)
    layout = teacher_memory_format(trainer.teacher_memory_format, device, trainer.channels_last)
    fold = trainer.teacher_fold_bn and getattr(algorithm, "fold_teacher_batchnorm", True)
    for teacher in teachers:
        if fold:
            fold_batchnorm(teacher)
        teacher.to(memory_format=layout)
    if trainer.compile:
        for model in (algorithm.student, *teachers):
            model.compile(backend=trainer.compile_backend)


def check_assembly(config: RunConfig, splits: Any) -> None:
    """Build everything once on untrained teachers, so a wrong module path, parameter or shape
    is reported in seconds, before any teacher is trained. Shapes do not depend on weights."""
    build_transforms(config.trainer.model_transforms)  # a typo or a missing plugin, named now
    with torch.random.fork_rng():
        teachers = {t.name: build_model(t, splits.source, f"teachers[{i}]")
                    for i, t in enumerate(config.teachers)}
        student = build_model(config.student, splits.source, "student")
        sample = sample_inputs(splits)
        task = splits.source.task
        check_takes_inputs(student, sample, "student", task)
        for i, t in enumerate(config.teachers):
            check_takes_inputs(teachers[t.name], sample, f"teachers[{i}]", task)
        build_algorithm(config, splits, student, teachers).remove_taps()


def checked_groups(algorithm: Any) -> list[dict[str, Any]]:
    """``algorithm.parameter_groups()``, checked to hold every trainable parameter once."""
    groups = [{**g, "params": list(g["params"])} for g in algorithm.parameter_groups()]  # generators once
    check_holds_each_once(algorithm, [p for g in groups for p in g["params"]], "parameter_groups()")
    return groups


def make_optimizers(algorithm: Any, config: RunConfig, steps_per_epoch: int
                    ) -> tuple[dict[str, torch.optim.Optimizer], dict[str, Any]]:
    """The optimizers by name and one schedule each (``config.schedule``): the algorithm's own,
    when its ``optimizers(build)`` gives a dict, else the engine's one optimizer over
    ``parameter_groups()`` (named :data:`~.loop.ENGINE_OPTIMIZER`)."""
    optimizers = checked_own_optimizers(algorithm, lambda groups: make_optimizer(groups, config.optimizer))
    if optimizers is None:
        optimizers = {ENGINE_OPTIMIZER: make_optimizer(checked_groups(algorithm), config.optimizer)}
    schedulers = {name: make_scheduler(o, config.schedule, steps_per_epoch, config.trainer.epochs)
                  for name, o in optimizers.items()}
    return optimizers, schedulers


class Terminated(KeyboardInterrupt):
    """SIGTERM (how schedulers and ``kill`` stop a job), raised where the main thread is, so
    it unwinds like Ctrl-C: locks released, partial files left as atomic writes leave them."""


class Interrupted(KeyboardInterrupt):
    """A run stopped by Ctrl-C or SIGTERM; ``run_dir`` is what ``--resume`` takes (``None``
    when it stopped before creating one)."""

    def __init__(self, run_dir: str | None, how: str) -> None:
        super().__init__(how)
        self.run_dir, self.how = run_dir, how


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into :class:`Terminated` for the block (main thread only: signal handlers
    can be set nowhere else), restoring the previous handler after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise Terminated("SIGTERM")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(config: RunConfig, *, resume_dir: str | None = None,
        log: Callable[[str], None] = print) -> str:
    """Train as configured; returns the run directory ("" on ranks other than 0 under torchrun).

    A config mistake found before the student's training (a wrong path, a missing checkpoint, a
    teacher off its ``expect_metric``) leaves no run directory behind: the one this call created is
    removed."""
    created: list[str] = []
    try:
        with sigterm_as_interrupt(), contextlib.ExitStack() as held:  # held: the run dir's lock
            return _run(config, resume_dir, log, created, held)
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: the run dir stays, to be resumed
        where = resume_dir or (created[0] if created else None)
        raise Interrupted(where, "SIGTERM" if isinstance(exc, Terminated) else "Ctrl-C") from None
    except (UserError, NonFiniteLoss):  # NaN/Inf: a teacher's own training diverged
        for path in created:
            if os.path.isdir(path) and set(os.listdir(path)) <= {"config.yaml", RUN_LOCK}:
                shutil.rmtree(path, ignore_errors=True)
                log(f"run dir {path} removed: the run stopped before training the student")
        raise
    finally:
        distributed.teardown()


def _run(config: RunConfig, resume_dir: str | None, log: Callable[[str], None],
         created: list[str], held: contextlib.ExitStack) -> str:
    """The run, step by step: each step is a function below, in this order."""
    # a typo in a block's type or parameters (or teachers for an algorithm that takes none),
    # named before any data is read or any run dir is created, as --print-config names it
    check_components(config)
    device, log = set_up_process(config, log)
    main = distributed.is_main()
    splits, augment, callbacks = load_checked_data(config)
    run_dir = open_run_dir(config, resume_dir, main, log, created, held)
    started = time.perf_counter()
    resuming = resume_dir is not None
    last = check_resume(config, run_dir) if resuming else None  # last.pt, read once
    if resuming and finished(run_dir, config.trainer.epochs, last, log):
        log(f"the run is complete ({config.trainer.epochs} epochs, summary.json written); nothing "
            f"to do. To train it longer: --resume {run_dir} --set trainer.epochs=N")
        return run_dir if main else ""

    check_assembly(config, splits)
    teachers = load_teachers(config, splits, device, log)
    algorithm = build_student_and_algorithm(config, splits, teachers, device, run_dir, log,
                                            from_last=last is not None)
    batches = make_batches(config, splits, augment, algorithm, device)
    call_each(callbacks, "before_training", algorithm=algorithm, batches=batches, teachers=teachers,
              device=device, log=log)
    training = Training(config, algorithm, batches, splits, device, run_dir,
                        {name: t.sha256 for name, t in teachers.items()}, log)
    training.restore_or_start(resuming, last)
    del last  # its tensors are in the algorithm and optimizer now, not held through training
    held.callback(training.loggers.close)  # closed when the run ends, however it ends
    try:
        training.pretrain()
        training.train()
    except NonFiniteLoss as exc:
        raise exc.keeping(training.kept()) from None
    finally:
        algorithm.remove_taps()

    distributed.barrier()
    if not main:
        return ""
    finish(training, teachers, time.perf_counter() - started)
    return run_dir


def set_up_process(config: RunConfig, log: Callable[[str], None]) -> tuple[torch.device, Callable[[str], None]]:
    """Plugins' import paths, seeds, the device (one per process under torchrun) and CPU
    threads; returns the device and the log to use (silent on ranks other than 0)."""
    use_import_paths(config.import_paths)  # type: import models
    random.seed(config.seed)
    torch.manual_seed(config.seed)
    device = distributed.setup(config.trainer.device) or pick_device(config.trainer.device)
    if config.trainer.sync_batchnorm:
        distributed.check_sync_batchnorm(device)
    if not distributed.is_main():
        log = lambda message: None  # noqa: E731 - rank 0 speaks for all
        config.trainer.progress = False
    if device.type == "cpu" and config.trainer.cpu_tuning:
        tune_cpu(config.trainer.threads)
    return device, log


def load_checked_data(config: RunConfig) -> tuple[Any, Any, list[Any]]:
    """The data splits, the training augmentation and the callbacks (``trainer.callbacks``),
    with the settings that depend on the data checked now (the callbacks' ``check`` too),
    before any teacher trains."""
    splits = load_data(config.data)
    augment = build_augment(config.data.augment, splits.source.task)
    callbacks = build_callbacks(config)
    call_each(callbacks, "check", splits=splits, augment=augment)
    check_batch_sizes(config, splits)
    distributed.check_batch(config.data.batch_size)
    return splits, augment, callbacks


def open_run_dir(config: RunConfig, resume_dir: str | None, main: bool, log: Callable[[str], None],
                 created: list[str], held: contextlib.ExitStack) -> str:
    """The run dir (a new one, or the one resumed), locked for this run, with the config."""
    run_dir = distributed.broadcast(resume_dir or (new_run_dir(config) if main else None))
    if main:
        if resume_dir is None:
            created.append(run_dir)
        # before anything is written: a second process on this run dir stops here
        held.enter_context(run_lock(run_dir, log))
        if resume_dir is None:
            write_text_atomic(dump_yaml(config), os.path.join(run_dir, "config.yaml"))
    log(f"run dir: {run_dir}")
    return run_dir


def check_resume(config: RunConfig, run_dir: str) -> dict[str, Any] | None:
    """Refuse a ``--resume`` that would change what the run trains (against config.yaml, and
    against the config last.pt was trained with); returns last.pt as loaded, for the resume to
    read (None: there is none)."""
    last = load_last(run_dir)
    saved_config = os.path.join(run_dir, "config.yaml")
    if os.path.isfile(saved_config):
        # as saved, rules unchecked (rules=False): a value a newer kdcore refuses may be what
        # the overrides fix; the config this run trains with has been checked in full
        check_resume_changes(structure(RunConfig, read_yaml(saved_config), rules=False), config)
    check_resumable(run_dir, last)
    if last is not None:  # config.yaml edited by hand since the checkpoint: same rules
        check_resume_changes(structure(RunConfig, last["config"], rules=False), config,
                             how=f"--resume (config.yaml edited since {CHECKPOINT})")
    return last


def load_teachers(config: RunConfig, splits: Any, device: torch.device,
                  log: Callable[[str], None]) -> dict[str, Teacher]:
    """Every teacher loaded, or trained and cached (checksum and size as trained, before
    speed_up folds BatchNorms into convolutions)."""
    prepare = partial(prepare_teachers, config, splits, device, log, build_model=build_model)
    if any(not t.checkpoint for t in config.teachers):  # as prepare_teachers reads it
        # under torchrun, the first process of each machine trains an uncached teacher (and logs
        # it, on rank 0); the others wait and load what it cached
        return distributed.local_main_first(prepare, device, "preparing the teachers")
    return prepare()  # checkpoints only: every process at once


def build_student_and_algorithm(config: RunConfig, splits: Any, teachers: dict[str, Teacher],
                                device: torch.device, run_dir: str, log: Callable[[str], None], *,
                                from_last: bool) -> Any:
    """The student (from ``student.checkpoint`` unless last.pt will restore it: ``from_last``)
    and the algorithm around it and the teachers, on the device and sped up as configured."""
    torch.manual_seed(config.seed)  # the student's init must not depend on teacher caching
    student = build_model(config.student, splits.source, "student")
    if config.student.checkpoint and not from_last:
        load_weights(student, os.path.expanduser(config.student.checkpoint), what="student.checkpoint")
    algorithm = build_algorithm(config, splits, student, {n: t.model for n, t in teachers.items()},
                                run_dir=run_dir)
    algorithm.to(device)
    if config.trainer.sync_batchnorm:
        converted = distributed.use_sync_batchnorm(algorithm)
        if converted:
            log(f"trainer.sync_batchnorm: {converted} BatchNorm layers synchronised across "
                f"{distributed.world_size()} processes")
    speed_up(algorithm, config, device, log)
    for t in teachers.values():  # the weights as they run: they must not change from here on
        t.running_sha256 = weights_checksum(t.model)
    return algorithm


def make_batches(config: RunConfig, splits: Any, augment: Any, algorithm: Any,
                 device: torch.device) -> Any:
    """The student's training batches (as the algorithm wants them)."""
    batches = algorithm.train_batches(
        TrainBatches(splits.student_train, config.data.batch_size, config.seed, device=device,
                     channels_last=config.trainer.channels_last, rank=distributed.rank(),
                     world=distributed.world_size(), augment=augment))
    if len(batches) == 0:
        raise UserError(f"config key data.batch_size: {config.data.batch_size} leaves no batch")
    return batches


class Training:
    """The student's training and what it writes as it goes: the optimizer, schedule and loss
    scale, where training stands, the metrics rows and ``last.pt``. ``on_step`` and
    ``on_epoch_end`` are the loop's callbacks."""

    def __init__(self, config: RunConfig, algorithm: Any, batches: Any, splits: Any,
                 device: torch.device, run_dir: str, checksums: dict[str, str],
                 log: Callable[[str], None]) -> None:
        self.config, self.algorithm, self.batches, self.splits = config, algorithm, batches, splits
        self.device, self.run_dir, self.checksums, self.log = device, run_dir, checksums, log
        self.main = distributed.is_main()
        self.optimizers, self.schedulers = make_optimizers(algorithm, config, len(batches))
        self.scaler = loss_scaler(config.trainer.amp, device)
        self.position = TrainingState()
        self.stages_done = False
        self.checkpoint_path = os.path.join(run_dir, CHECKPOINT)
        self.metrics_path = os.path.join(run_dir, "metrics.jsonl")
        self.metrics_record: list[str] = []  # the rows as metrics.jsonl has them: last.pt records them
        self.saved_at: int | None = None  # the global step of the last checkpoint written
        self.loggers = Loggers([])  # metrics.jsonl and trainer.loggers, on rank 0

    def restore_or_start(self, resuming: bool, last: Any) -> None:
        """Put a resumed run back where ``last`` (last.pt as loaded) left it (else start at step
        0), then open the metrics file and loggers after the rows it covers."""
        if last is not None:  # resuming, and last.pt was there
            self.position, self.stages_done = restore(
                self.checkpoint_path, self.algorithm, self.optimizers, self.schedulers, self.checksums,
                self.metrics_path if self.main else None, self.scaler, self.log, state=last)
            self.saved_at = self.position.global_step
            self.log(f"resumed at epoch {self.position.epoch + 1}, step {self.position.step_in_epoch} "
                     f"from {self.checkpoint_path}")
        if not self.main:
            return
        if resuming:  # after the checks: a refused resume changes nothing
            keep_resumed_config(self.config, self.run_dir, self.log, last)
            remove_partial_writes(self.run_dir)
        # counted once (restore checked them against last.pt), then in memory
        self.metrics_record = [line.rstrip("\n") for line in metrics_lines(self.metrics_path)]
        self.loggers = open_loggers(self.config, self.run_dir, len(self.metrics_record) + 1, self.log)

    def pretrain(self) -> None:
        """The algorithm's pre-training stages (FitNets hints and the like), once, then a checkpoint."""
        if self.stages_done:
            return
        for point, stage in self.algorithm.stages():
            if stage.epochs > 0:
                self.log(f"stage {stage.name} (distill point {point}): {stage.epochs} epochs")
                history = run_stage(self.algorithm, point, stage, self.batches,
                                    LoopSettings.of(self.config.trainer))
                self.log(f"stage {stage.name}: " + ", ".join(f"{k} {v:.4f}" for k, v in history.items()))
        self.stages_done = True
        self.save()

    def train(self) -> None:
        """The student's epochs, from where the run stands."""
        settings = LoopSettings.of(self.config.trainer, optimizers=self.optimizers,
                                   schedulers=self.schedulers, scaler=self.scaler,
                                   reduce=distributed.reduce_sums, on_step=self.on_step,
                                   on_epoch_end=self.on_epoch_end)
        if ENGINE_OPTIMIZER in self.optimizers:  # an algorithm that steps its own is not DDP-wrapped
            settings.step_module = distributed.wrap(self.algorithm, self.device)
        train_epochs(self.algorithm, self.batches, self.position, settings)

    def on_step(self, pos: TrainingState) -> None:
        every = self.config.trainer.checkpoint_every
        if every and pos.global_step % every == 0 and pos.step_in_epoch < len(self.batches):
            self.save()

    def on_epoch_end(self, pos: TrainingState, train: dict[str, float]) -> None:
        """Score, write the epoch's metrics row, say it, and checkpoint."""
        if not self.main:  # the others move on and wait for rank 0 at the next step's all-reduce
            self.check_weights()  # as rank 0 does before its checkpoint: all stop together
            return
        scores = self.score()
        groups = [group for optimizer in self.optimizers.values() for group in optimizer.param_groups]
        row = {"epoch": pos.epoch, "lr": groups[0]["lr"], "train": train, **scores}
        if len(groups) > 1:  # parameter_groups() with lr_scale, or several optimizers
            row["lr_groups"] = [group["lr"] for group in groups]
        check_run_dir(self.run_dir)
        try:
            self.loggers.log_epoch(row)  # metrics.jsonl first, then the trackers
        except OSError as error:  # the row is not covered by a checkpoint yet: resumable
            if error.errno in DISK_FULL:
                raise disk_full(self.metrics_path, error) from None
            raise
        self.metrics_record.append(json.dumps(row))
        metric = headline(self.splits.source.task)  # shown each epoch: top1, miou, map50
        shown = {f"{m} {s} {metric}" if len(scores) > 1 else f"{s} {metric}": v[metric]
                 for m, by_split in scores.items() for s, v in by_split.items() if metric in v}
        self.log(describe_epoch(pos.epoch, self.config.trainer.epochs, train, shown))
        skipped = train.get("scaler_skipped_steps", 0)
        if skipped * 2 > len(self.batches):  # a few skips as the scale settles are normal
            self.log(f"warning: the fp16 loss scaler skipped {skipped} of {len(self.batches)} steps "
                     f"this epoch (Inf/NaN gradients), so the weights barely moved; check the "
                     f"losses' gradients, or use trainer.amp=bf16")
        self.save()

    def score(self) -> dict[str, dict[str, dict[str, float]]]:
        """``{model: {split: metrics}}`` for every model the algorithm evaluates."""
        return {name: {split: evaluate(model, data, self.splits.source.task,
                                       batch_size=self.config.data.eval_batch_size, device=self.device)
                       for split, data in self.splits.evaluation.items()}
                for name, model in self.algorithm.evaluation_models().items()}

    def save(self) -> None:
        """Write last.pt (rank 0), after checking the weights (every rank)."""
        self.check_weights()
        if self.main:
            check_run_dir(self.run_dir)
            state = run_state(self.algorithm, self.optimizers, self.schedulers, self.scaler, self.position,
                              stages_done=self.stages_done, checksums=self.checksums,
                              metrics=self.metrics_record, config=self.config)
            save_atomic(state, self.checkpoint_path)
        self.saved_at = self.position.global_step  # every rank knows what rank 0 kept

    def check_weights(self) -> None:
        """A finite loss can still step to NaN weights: checked before every checkpoint, by every
        process (DDP keeps their weights equal), so all stop together."""
        broken = nonfinite_tensors(trainable_state(self.algorithm))
        if broken:
            raise NonFiniteLoss(f"the weights hold NaN/Inf after {self.position.global_step} steps "
                                f"({', '.join(broken[:3])}{', ...' if len(broken) > 3 else ''}) "
                                f"although the loss was finite; not checkpointed", BROKEN_HINT, self.kept())

    def kept(self) -> str:
        """What a NaN/Inf stop leaves to resume from."""
        if self.saved_at is None:
            return "no checkpoint was written before it"
        return f"the last good checkpoint is kept: {CHECKPOINT}, after {self.saved_at} steps"


def finish(training: Training, teachers: dict[str, Teacher], seconds: float) -> None:
    """The run's products, on rank 0: summary.json (written last) and the student's weights."""
    algorithm, run_dir = training.algorithm, training.run_dir
    summary = summarize(training, teachers, seconds)
    check_run_dir(run_dir)
    exported = next(iter(algorithm.evaluation_models().values()))
    broken = nonfinite_tensors(exported.state_dict())
    if broken:  # the checkpoints were checked: only weights loaded from elsewhere get here
        raise NonFiniteLoss(f"the student's weights hold NaN/Inf ({', '.join(broken[:3])}); "
                            f"student.pt is not written", BROKEN_HINT, training.kept())
    save_atomic(exported.state_dict(), os.path.join(run_dir, "student.pt"))
    write_safetensors(exported.state_dict(), os.path.join(run_dir, "student.safetensors"))
    write_json_atomic(summary, os.path.join(run_dir, "summary.json"))
    training.loggers.log_summary(summary)


def summarize(training: Training, teachers: dict[str, Teacher], seconds: float) -> dict[str, Any]:
    """summary.json: the exported student's test scores and best epoch, the other evaluated
    models (``exits``), each teacher's scores, size, file and checksum, and the run's times."""
    config, splits, device = training.config, training.splits, training.device
    rows = metrics_rows(training.metrics_path)
    models = training.algorithm.evaluation_models()
    first = next(iter(models))
    task = splits.source.task
    test = partial(evaluate, data=splits.test, task=task, batch_size=config.data.eval_batch_size,
                   device=device)
    student: dict[str, Any] = {**test(models[first]),
                               "params": sum(p.numel() for p in models[first].parameters())}
    key, metric = ("val" if splits.val is not None else "test"), headline(task)
    history = [(r["epoch"], r[first][key][metric]) for r in rows if first in r and metric in r[first][key]]
    if history:
        best_epoch, best = max(history, key=lambda x: x[1])
        student.update({"best_epoch": best_epoch, f"best_{key}_{metric}": best})
        if splits.val is not None:
            student[f"val_{metric}"] = history[-1][1]
    summary: dict[str, Any] = {"algo": config.algorithm.type, "metric": metric, "student": student,
                               "epochs": config.trainer.epochs, "seconds": round(seconds, 2),
                               # every epoch's training time, across resumes (see docs/outputs.md)
                               "train_seconds": round(sum(r["train"].get("seconds", 0.0) for r in rows), 2),
                               "run_dir": training.run_dir, "device": str(device),
                               "processes": distributed.world_size(),
                               "train_images": len(splits.train),
                               "labelled_images": config.data.labelled or len(splits.train)}
    for name, model in models.items():
        if name != first:
            summary.setdefault("exits", {})[name] = test(model)
    per_teacher = {}
    for name, teacher in teachers.items():
        if weights_checksum(teacher.model) != teacher.running_sha256:
            raise RuntimeError(f"teacher {name!r} weights changed during the run; this is a bug")
        per_teacher[name] = {**test(teacher.model, frozen=True),
                             "params": teacher.params, "checkpoint": teacher.checkpoint,
                             "sha256": teacher.sha256}
    if per_teacher:
        summary["teacher"] = next(iter(per_teacher.values()))
        summary["teachers"] = per_teacher
    return summary
