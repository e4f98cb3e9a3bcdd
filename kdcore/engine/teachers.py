"""Teachers: loaded from a checkpoint, or trained once and cached for later runs.

A teacher without ``checkpoint`` is trained with the plain supervised algorithm and its
``train`` settings, then saved under ``$KDCORE_CACHE_DIR/teachers`` (default
``~/.cache/kdcore``) keyed by a hash of everything that determines it: model, parameters,
training recipe (with its own seed) and data set. The next run with the same teacher block reuses it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..assemble import Splits, build_model
from ..builtin.algorithms import Vanilla
from ..config import RunConfig, TeacherConfig, unstructure
from ..errors import UserError
from ..files import cache_dir
from .batches import TrainBatches
from .checkpoint import exclusive, load_weights, save_atomic
from .evaluate import evaluate
from .fast_max_pool import use_fast_max_pool
from .loop import Position, describe_epoch, train_epochs
from .optim import make_optimizer, make_scheduler

#: Bump when the teacher training recipe changes in a way the hash cannot see.
RECIPE_VERSION = 1


def teacher_key(tcfg: TeacherConfig, config: RunConfig, splits: Splits) -> str:
    identity = {
        "recipe": RECIPE_VERSION,
        "type": tcfg.type,
        "params": tcfg.params,
        "train": unstructure(tcfg.train),
        "data": {"type": config.data.type, "params": config.data.params,
                 "train_limit": config.data.train_limit, "val_split": config.data.val_split,
                 "batch_size": config.data.batch_size, "fingerprint": splits.source.fingerprint},
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


def weights_checksum(model: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def train_teacher(model: nn.Module, tcfg: TeacherConfig, config: RunConfig, splits: Splits,
                  device: torch.device, log: Callable[[str], None]) -> dict[str, float]:
    torch.manual_seed(tcfg.train.seed)
    if config.trainer.fast_max_pool:
        use_fast_max_pool(model)
    algorithm = Vanilla(model.to(device), splits.source.task)
    batches = TrainBatches(splits.train, config.data.batch_size, tcfg.train.seed, device=device)
    optimizer = make_optimizer(model.parameters(), tcfg.train.optimizer)
    scheduler = make_scheduler(optimizer, tcfg.train.schedule, len(batches), tcfg.train.epochs)
    scores: dict[str, float] = {}

    def on_epoch_end(position: Position, train: dict[str, float]) -> None:
        scores.update(evaluate(model, splits.test, splits.source.task,
                               batch_size=config.data.eval_batch_size, device=device))
        log(f"teacher {tcfg.name}: " + describe_epoch(position.epoch, tcfg.train.epochs, train,
                                                      {"test top1": scores["top1"]}))

    train_epochs(algorithm, batches, optimizer, scheduler, epochs=tcfg.train.epochs,
                 position=Position(), progress=config.trainer.progress,
                 label=f"teacher {tcfg.name}", on_epoch_end=on_epoch_end)
    algorithm.remove_taps()
    return scores


def prepare_teachers(config: RunConfig, splits: Splits, device: torch.device,
                     log: Callable[[str], None]) -> dict[str, dict[str, Any]]:
    """``{name: {"model": module, "checkpoint": path, "trained": bool}}`` for every teacher."""
    prepared: dict[str, dict[str, Any]] = {}
    for i, tcfg in enumerate(config.teachers):
        where = f"teachers[{i}]"
        with torch.random.fork_rng():  # a teacher's init depends on its own seed, not the run's
            torch.manual_seed(tcfg.train.seed)
            model = build_model(tcfg, splits.source, where)
        trained = False
        if tcfg.checkpoint:
            path = os.path.expanduser(tcfg.checkpoint)
            load_weights(model, path, what=f"{where}.checkpoint")
        elif len(splits.train) == 0:
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
                    log(f"teacher {tcfg.name}: using cached checkpoint {path}")
                else:
                    log(f"teacher {tcfg.name}: no checkpoint given, training {tcfg.type} for "
                        f"{tcfg.train.epochs} epochs (cached afterwards at {path})")
                    scores = train_teacher(model, tcfg, config, splits, device, log)
                    save_atomic({"state_dict": model.state_dict(),
                                 "meta": {"type": tcfg.type, "top1": scores.get("top1", 0.0)}}, path)
                    trained = True
        model.to(device)
        if tcfg.expect_top1 is not None:
            top1 = evaluate(model, splits.test, splits.source.task,
                            batch_size=config.data.eval_batch_size, device=device, frozen=True)["top1"]
            if abs(top1 - tcfg.expect_top1) > 1.0:
                raise UserError(f"{where}.expect_top1: the teacher scores {top1:.2f} top-1 on the "
                                f"test split, expected {tcfg.expect_top1:.2f} (+/- 1.0); check "
                                f"{where}.checkpoint and the data set")
        prepared[tcfg.name] = {"model": model, "checkpoint": path, "trained": trained}
    return prepared
