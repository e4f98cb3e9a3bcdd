"""Teachers: loaded from a checkpoint, or trained once and cached for later runs.

A teacher without ``checkpoint`` is trained with the plain supervised algorithm and its
``train`` settings, then saved under ``$KDCORE_CACHE_DIR/teachers`` (default
``~/.cache/kdcore``) keyed by a hash of everything that determines it: model, parameters,
training recipe (with its own seed) and data set. The next run with the same teacher block reuses it.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import inspect
import json
import os
from collections.abc import Callable
from typing import Any

import attrs
import torch
from torch import nn

from ..builtin.algorithms import Vanilla
from ..config import RunConfig, TeacherConfig, flatten, shown, unstructure
from ..data.splits import Splits, take
from ..errors import UserError
from ..models.imported import resolve_target
from ..task import headline
from ..files import cache_dir
from .batches import TrainBatches
from .checkpoint import exclusive, load_weights, save_atomic
from .evaluate import evaluate
from .loop import (ENGINE_OPTIMIZER, LoopSettings, NonFiniteLoss, TrainingState, describe_epoch,
                   nonfinite_tensors, train_epochs)
from .optim import make_optimizer, make_scheduler
from .transforms import apply_transforms, build_transforms

#: Bump when the teacher training recipe changes in a way the hash cannot see.
RECIPE_VERSION = 1


def teacher_recipe(tcfg: TeacherConfig, config: RunConfig, splits: Splits) -> dict[str, Any]:
    """Everything that determines a trained teacher. The student's own data settings
    (``data.train_limit``, ``data.batch_size``, ``data.labelled``) are not in it: a teacher has
    its own (``train.train_limit``, ``train.batch_size``), so quick runs share its cache."""
    return json.loads(json.dumps({
        "recipe": RECIPE_VERSION,
        "type": tcfg.type,
        "params": tcfg.params,
        "train": unstructure(tcfg.train),
        "data": {"type": config.data.type, "params": config.data.params,
                 "val_split": config.data.val_split, "fingerprint": splits.source.fingerprint},
        **({"code": imported_code(tcfg.params["target"])} if tcfg.type == "import" else {}),
    }, sort_keys=True, default=str))


def imported_code(target: str) -> str:
    """A hash of the file that defines a ``type: import`` teacher: edited code is a new recipe."""
    factory = resolve_target(target, where="teacher")
    try:
        with open(inspect.getsourcefile(factory) or "", "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()[:16]
    except (OSError, TypeError):
        return "unknown"


def teacher_key(tcfg: TeacherConfig, config: RunConfig, splits: Splits) -> str:
    identity = teacher_recipe(tcfg, config, splits)
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


def teacher_data(tcfg: TeacherConfig, splits: Splits) -> Any:
    """The images a teacher trains on: the training split (after the validation hold-out, not
    cut by ``data.train_limit``), cut to ``train.train_limit`` when given."""
    data = splits.full_train
    limit = tcfg.train.train_limit
    if limit and limit < len(data):
        data = take(data, torch.arange(limit))
    return data


def why_new(path: str, recipe: dict[str, Any]) -> str:
    """Why no cached teacher fits: the settings in which the newest cached teacher of the same
    model differs from this recipe (read from its ``meta.recipe``), or that none is cached."""
    kind = os.path.basename(path).rsplit("-", 1)[0]
    others = set(glob.glob(os.path.join(glob.escape(os.path.dirname(path)), f"{glob.escape(kind)}-*.pt")))
    for other in sorted(others - {path}, key=os.path.getmtime, reverse=True)[:5]:
        try:
            meta = torch.load(other, map_location="cpu", weights_only=True).get("meta", {})
        except Exception:  # a damaged or foreign file: not a reason
            continue
        if "recipe" not in meta:
            continue
        mine, theirs = flatten(recipe), flatten(meta["recipe"])
        changed = [f"{k} {shown(theirs.get(k), 24)} -> {shown(mine.get(k), 24)}"
                   for k in sorted(set(mine) | set(theirs)) if mine.get(k) != theirs.get(k)]
        if changed:  # a log line: three settings at most, long values (paths) cut short
            more = f" (and {len(changed) - 3} more)" if len(changed) > 3 else ""
            return f"the cached {os.path.basename(other)} was trained with other settings: " + \
                "; ".join(changed[:3]) + more
    return f"no {kind} teacher trained with these settings is cached yet"


def weights_checksum(model: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def train_teacher(model: nn.Module, tcfg: TeacherConfig, config: RunConfig, splits: Splits,
                  device: torch.device, log: Callable[[str], None]) -> dict[str, float]:
    torch.manual_seed(tcfg.train.seed)
    apply_transforms(build_transforms(config.trainer.model_transforms), model, "teacher_training", log)
    algorithm = Vanilla(model.to(device), splits.source.task)
    batches = TrainBatches(teacher_data(tcfg, splits), tcfg.train.batch_size, tcfg.train.seed, device=device)
    optimizer = make_optimizer(model.parameters(), tcfg.train.optimizer)
    scheduler = make_scheduler(optimizer, tcfg.train.schedule, len(batches), tcfg.train.epochs)
    scores: dict[str, float] = {}

    def on_epoch_end(position: TrainingState, train: dict[str, float]) -> None:
        scores.update(evaluate(model, splits.test, splits.source.task,
                               batch_size=config.data.eval_batch_size, device=device))
        metric = headline(splits.source.task)
        log(f"teacher {tcfg.name}: " + describe_epoch(position.epoch, tcfg.train.epochs, train,
                                                      {f"test {metric}": scores[metric]}))

    train_epochs(algorithm, batches, TrainingState(),
                 LoopSettings(tcfg.train.epochs, {ENGINE_OPTIMIZER: optimizer}, {ENGINE_OPTIMIZER: scheduler},
                              progress=config.trainer.progress, label=f"teacher {tcfg.name}",
                              on_epoch_end=on_epoch_end))
    algorithm.remove_taps()
    return scores


@attrs.define(eq=False)
class Teacher:
    """A teacher ready to teach: its model, the file its weights came from, and what the run
    records of them. ``sha256`` and ``params`` are of the weights as trained or loaded (last.pt
    and the summary record them); ``running_sha256`` of the weights as they run, after
    :func:`~.run.speed_up`'s rewrites, which must not change during the run."""

    model: nn.Module
    #: the checkpoint given, or the teacher cache's file
    checkpoint: str
    sha256: str
    params: int
    running_sha256: str | None = None


def prepare_teachers(config: RunConfig, splits: Splits, device: torch.device, log: Callable[[str], None],
                     *, build_model: Callable[[TeacherConfig, Any, str], nn.Module]) -> dict[str, Teacher]:
    """Every teacher, by name: loaded from its checkpoint or the cache, else trained and cached.
    ``build_model(teacher_config, data_source, where)`` makes its untrained network
    (:func:`kdcore.assemble.build_model`: the assembly is the caller's, above the engine)."""
    prepared: dict[str, Teacher] = {}
    for i, tcfg in enumerate(config.teachers):
        where = f"teachers[{i}]"
        with torch.random.fork_rng():  # a teacher's init depends on its own seed, not the run's
            torch.manual_seed(tcfg.train.seed)
            model = build_model(tcfg, splits.source, where)
        if tcfg.checkpoint:
            path = os.path.expanduser(tcfg.checkpoint)
            load_weights(model, path, what=f"{where}.checkpoint")
            broken = nonfinite_tensors(model.state_dict())
            if broken:
                raise UserError(f"{where}.checkpoint {path} holds NaN/Inf weights "
                                f"({', '.join(broken[:3])}); a teacher must be finite to teach")
            log(f"teacher {tcfg.name}: using {where}.checkpoint {path}")
        elif len(teacher_data(tcfg, splits)) == 0:
            raise UserError(f"{where}.checkpoint: this run has no training images to train the "
                            f"teacher on; give the teacher's checkpoint file, e.g. --set "
                            f"teachers.{i}.checkpoint=PATH (the default job prints its cached "
                            f"teacher's path)")
        else:
            path = os.path.join(cache_dir(), "teachers",
                                f"{tcfg.type}-{teacher_key(tcfg, config, splits)}.pt")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            # a cached teacher needs no lock: the lock only orders who trains a missing one
            with contextlib.nullcontext() if os.path.exists(path) else exclusive(path, log):
                if os.path.exists(path):  # cached before, or by the run this one waited for
                    load_weights(model, path, what="cached teacher (delete it to retrain)")
                    log(f"teacher {tcfg.name}: using cached checkpoint {path} (same model, training "
                        f"settings and data)")
                else:
                    recipe = teacher_recipe(tcfg, config, splits)
                    images = len(teacher_data(tcfg, splits))
                    log(f"teacher {tcfg.name}: no checkpoint given and {why_new(path, recipe)}; "
                        f"training {tcfg.type} for {tcfg.train.epochs} epochs on {images} images "
                        f"(cached afterwards at {path})")
                    try:
                        scores = train_teacher(model, tcfg, config, splits, device, log)
                        broken = nonfinite_tensors(model.state_dict())
                        if broken:  # the last step's loss was finite, its update was not
                            raise NonFiniteLoss(f"its weights hold NaN/Inf after training "
                                                f"({', '.join(broken[:3])})")
                    except NonFiniteLoss as exc:  # its own message: no run checkpoint exists yet
                        raise NonFiniteLoss(
                            f"teacher {tcfg.name!r} ({where}), trained before the student because "
                            f"it has no checkpoint: its training diverged, {exc.detail}",
                            f"lower {where}.train.optimizer.lr, or give {where}.checkpoint",
                            "nothing is cached for it and the student was not trained") from None
                    save_atomic({"state_dict": model.state_dict(),
                                 "meta": {"type": tcfg.type, **{k: v for k, v in scores.items() if "_" not in k},
                                          "recipe": recipe}}, path)
        model.to(device)
        check_expected(tcfg, model, config, splits, device, where)
        prepared[tcfg.name] = Teacher(model, path, sha256=weights_checksum(model),
                                      params=sum(p.numel() for p in model.parameters()))
    return prepared


def check_expected(tcfg: TeacherConfig, model: nn.Module, config: RunConfig, splits: Splits,
                   device: torch.device, where: str) -> None:
    """``expect_metric`` (the task's headline metric) or ``expect_top1`` (classification only),
    within 1.0 on the test split: a wrong checkpoint or data set is caught before distilling."""
    metric = headline(splits.source.task)
    if tcfg.expect_top1 is not None and metric != "top1":
        raise UserError(f"{where}.expect_top1: this data set is scored by {metric}, not top-1; "
                        f"use {where}.expect_metric (the expected {metric})")
    key, expected = ("expect_top1", tcfg.expect_top1) if tcfg.expect_top1 is not None else \
        ("expect_metric", tcfg.expect_metric)
    if expected is not None:
        value = evaluate(model, splits.test, splits.source.task,
                         batch_size=config.data.eval_batch_size, device=device, frozen=True)[metric]
        if abs(value - expected) > 1.0:
            raise UserError(f"{where}.{key}: the teacher scores {value:.2f} {metric} on the "
                            f"test split, expected {expected:.2f} (+/- 1.0); check "
                            f"{where}.checkpoint and the data set")
