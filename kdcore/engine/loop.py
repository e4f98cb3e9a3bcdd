"""The training loop. Read it top to bottom: one epoch is batches -> loss terms -> step.

The algorithm says what is minimised (a dict of loss terms); this loop sums the terms,
backpropagates, steps the optimizer and schedule, reports progress, and calls back at the end of
every epoch (evaluation, metrics, checkpoints live in :mod:`kdcore.engine.run`).
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Callable
from typing import Any

import attrs
import torch
from tqdm import tqdm

from ..components import Algorithm, Stage
from ..errors import UserError
from .batches import TrainBatches
from .distributed import all_ranks, average_gradients


#: the hint every NaN/Inf stop of the loop ends with
SKIP_HINT = "set trainer.on_nonfinite=skip to skip such batches"


#: the hint of a stop after batches skipped for NaN/Inf
BROKEN_HINT = "lower the learning rate or set trainer.grad_clip"


class NonFiniteLoss(Exception):
    """A loss term (or the weights) became NaN or Inf. ``detail`` names the term, epoch and
    step; ``kept`` says what was kept, which only the caller knows (a run's last.pt; nothing,
    for a teacher's own training): the loop raises without it, the caller adds it
    (:meth:`keeping`)."""

    def __init__(self, detail: str, hint: str | None = SKIP_HINT, kept: str | None = None) -> None:
        self.detail, self.hint, self.kept = detail, hint, kept
        super().__init__(f"{detail}; stopped{', ' + kept if kept else ''}{f' ({hint})' if hint else ''}")

    def keeping(self, kept: str) -> NonFiniteLoss:
        return self if self.kept else NonFiniteLoss(self.detail, self.hint, kept)


#: what a stop inside a pre-training stage keeps
STAGE_KEPT = "before training: no checkpoint is written"


def nonfinite_tensors(state: dict[str, Any]) -> list[str]:
    """The names of the floating-point tensors holding a NaN or Inf: one reduction per tensor,
    one host sync for all, so checking before every checkpoint costs little. Entries that are
    not tensors (a module's extra state) are not weights and are passed over."""
    names = [name for name, value in state.items()
             if torch.is_tensor(value) and value.is_floating_point() and value.numel()]
    if not names:
        return []
    flags = [torch.isfinite(state[name]).all() for name in names]
    devices = {flag.device for flag in flags}
    # stacked where they are (one copy to the host), unless the tensors live on several devices
    ok = torch.stack(flags).cpu() if len(devices) == 1 else torch.stack([f.cpu() for f in flags])
    if bool(ok.all()):
        return []
    return [name for name, good in zip(names, ok.tolist()) if not good]


@attrs.define
class Position:
    """Where training stands; saved in checkpoints so a resumed run continues exactly."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    sums: dict[str, float] = attrs.field(factory=dict)
    seen: int = 0
    skipped: int = 0
    seconds: float = 0.0
    scaler_skipped: int = 0
    skipped_in_row: int = 0


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """Mixed precision for the forward passes (``trainer.amp``); losses upcast as they need."""
    if amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def loss_scaler(amp: str, device: torch.device) -> torch.amp.GradScaler | None:
    """fp16 needs loss scaling against gradient underflow; bf16 has fp32's range and does not.
    Its scale adapts during training, so a run checkpoints it (``grad_scaler``)."""
    return torch.amp.GradScaler(device.type) if amp == "fp16" else None


def _scalar(name: str, value: torch.Tensor) -> torch.Tensor:
    """A loss term as a float32 scalar (a one-element term is accepted as one)."""
    if value.dim():
        if value.numel() != 1:
            raise UserError(f"loss term {name!r} has shape {tuple(value.shape)}; a loss must return "
                            f"a scalar (reduce over the batch, e.g. .mean())")
        value = value.reshape(())
    return value if value.dtype == torch.float32 else value.float()


def sum_terms(terms: dict[str, torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The loss to backpropagate (the terms, each a float32 scalar, added in order) and the
    terms to read."""
    if not terms:
        raise UserError("the algorithm's training_step returned no loss terms; it must return "
                        "{name: scalar tensor} with at least one term")
    values = [_scalar(name, value) for name, value in terms.items()]
    return sum(values[1:], values[0]), values


def read_values(values: list[torch.Tensor]) -> list[float]:
    """The terms' values on the host, in one copy (one sync on an accelerator): the step's one
    readout, for the NaN/Inf check and the logs."""
    return torch.stack(values).tolist()


def agreed_finite(finite: bool, on_nonfinite: str, device: torch.device) -> bool:
    """Under ``skip`` every DDP rank skips a batch, or none does: a lone skip would leave the
    others waiting in DDP's all-reduce."""
    return all_ranks(finite, device) if on_nonfinite == "skip" else finite


# the epoch summary's entries that are not loss terms
NOT_TERMS = ("loss", "images_per_second", "seconds", "skipped_batches", "scaler_skipped_steps")


def bar_disabled(progress: bool) -> bool | None:
    """tqdm's ``disable`` for ``trainer.progress``: ``None`` lets tqdm turn the bar off when its
    stream (stderr) is not a terminal, so a log file or CI output gets the plain per-epoch lines
    instead of one long line of carriage-return redraws."""
    return None if progress else True


def format_terms(terms: dict[str, float]) -> str:
    return " ".join(f"{k} {v:.4f}" for k, v in terms.items())


def overflowed(scaler: torch.amp.GradScaler, optimizer: torch.optim.Optimizer) -> bool:
    """Whether the fp16 loss scaler will skip this step: its scaled gradients held Inf/NaN (read
    after ``unscale_``, as ``scaler.step`` itself decides; one host sync, which non-fused
    optimizers pay inside ``scaler.step`` anyway)."""
    return any(bool(found.item()) for found in scaler._found_inf_per_device(optimizer).values())


def step_schedule(scheduler: torch.optim.lr_scheduler.LRScheduler, stepped: bool) -> None:
    """Advance the schedule once per batch, skipped ones included, so it ends where configured.
    torch warns, on a scheduler's first step only, when no optimizer step came before it; after
    a skipped first step that order is deliberate. (Filtering only then: ``catch_warnings``
    would re-arm every other once-only warning.)"""
    if stepped or getattr(scheduler, "_step_count", 1) > 1:
        scheduler.step()
        return
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before")
        scheduler.step()


def step_function(algorithm: Algorithm, step_module: Callable[..., dict[str, torch.Tensor]] | None,
                  device: torch.device, amp: str) -> Callable[..., dict[str, torch.Tensor]]:
    """``(batch, *, epoch, step) -> terms``: the algorithm's ``training_step`` (or its DDP
    wrapper, ``step_module``), under autocast when ``amp`` asks for it; nothing wraps it otherwise."""
    inner = step_module if step_module is not None else algorithm.training_step
    if amp == "none":
        return inner
    precision = autocast(device, amp)  # re-entrant: one context for every step

    def with_precision(batch: Any, *, epoch: int, step: int) -> dict[str, torch.Tensor]:
        with precision:
            return inner(batch, epoch=epoch, step=step)
    return with_precision


def train_epochs(
    algorithm: Algorithm,
    batches: TrainBatches,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    *,
    epochs: int,
    position: Position,
    on_nonfinite: str = "stop",
    max_skipped_in_row: int = 10,
    grad_clip: float | None = None,
    progress: bool = True,
    label: str = "train",
    amp: str = "none",
    scaler: torch.amp.GradScaler | None = None,
    step_module: Callable[..., dict[str, torch.Tensor]] | None = None,
    reduce: Callable[..., tuple[dict[str, float], int, int]] | None = None,
    on_step: Callable[[Position], None] | None = None,
    on_epoch_end: Callable[[Position, dict[str, float]], None] | None = None,
) -> Position:
    """Train from ``position`` until ``epochs`` are done; returns the final position.

    ``on_nonfinite="skip"`` skips a batch whose loss is NaN/Inf, but stops (:class:`NonFiniteLoss`)
    once ``max_skipped_in_row`` batches in a row, or every batch of an epoch, were skipped: the
    weights are then broken, and a run that went on would export them.
    ``step_module`` replaces ``algorithm.training_step`` (a DDP wrapper of it); ``reduce``
    combines the epoch's loss sums across processes. ``on_step(position)`` runs after every step.
    ``scaler``: the fp16 loss scaler to use (a caller that checkpoints it passes its own); by
    default a fresh one for ``amp="fp16"``."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    device = params[0].device if params else torch.device("cpu")
    if scaler is None:
        scaler = loss_scaler(amp, device)
    step = step_function(algorithm, step_module, device, amp)
    while position.epoch < epochs:
        algorithm.train()
        epoch = position.epoch
        started = time.perf_counter() - position.seconds
        bar = tqdm(total=len(batches), initial=position.step_in_epoch, disable=bar_disabled(progress),
                   desc=f"{label} {epoch + 1}/{epochs}", leave=False, dynamic_ncols=True)
        shown_at = 0.0
        for batch in batches.epoch(epoch, position.step_in_epoch):
            terms = step(batch, epoch=epoch, step=position.global_step)
            loss, scalars = sum_terms(terms)
            values = dict(zip(terms, read_values(scalars)))
            finite = agreed_finite(math.isfinite(sum(values.values())), on_nonfinite, device)
            if not finite:
                bad = next((k for k, v in values.items() if not math.isfinite(v)), None)
                total = sum(values.values())
                what = (f"term {bad!r} is {values[bad]}" if bad is not None else
                        f"terms sum to {total}" if not math.isfinite(total) else
                        "term on another process is NaN/Inf")
                where = f"{what} at epoch {epoch + 1}, step {position.global_step}"
                if on_nonfinite == "stop":
                    raise NonFiniteLoss(f"loss {where}")
                position.skipped += 1
                position.skipped_in_row += 1
                stepped = False
                if position.skipped_in_row >= max_skipped_in_row:
                    raise NonFiniteLoss(
                        f"trainer.on_nonfinite=skip skipped {position.skipped_in_row} batches in a "
                        f"row (trainer.max_skipped_in_row; the last: loss {where}), so the weights "
                        f"or inputs are broken", BROKEN_HINT)
            else:
                position.skipped_in_row = 0
                optimizer.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.unscale_(optimizer)
                else:
                    loss.backward()
                if grad_clip:
                    torch.nn.utils.clip_grad_norm_(params, grad_clip)
                if scaler is not None:
                    stepped = not overflowed(scaler, optimizer)  # GradScaler's own skip decision
                    position.scaler_skipped += not stepped
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                    stepped = True
                n = batch.indices.shape[0]  # not len(): Tensor.__len__ is Python, four calls a step
                for name, value in values.items():
                    position.sums[name] = position.sums.get(name, 0.0) + value * n
                position.seen += n
            step_schedule(scheduler, stepped)
            position.step_in_epoch += 1
            position.global_step += 1
            position.seconds = time.perf_counter() - started
            if progress:
                bar.update(1)
                if time.perf_counter() - shown_at > 0.5:
                    shown_at = time.perf_counter()
                    means = {k: v / max(position.seen, 1) for k, v in position.sums.items()}
                    bar.set_postfix_str(f"{format_terms(means)} | "
                                        f"{position.seen / max(position.seconds, 1e-9):.0f} img/s", refresh=False)
            if on_step is not None:
                on_step(position)
        bar.close()
        if position.skipped >= len(batches) > 0:  # before the epoch's checkpoint and metrics row
            raise NonFiniteLoss(f"trainer.on_nonfinite=skip skipped all {position.skipped} batches "
                                f"of {label} epoch {epoch + 1} (NaN/Inf losses), so the weights or "
                                f"inputs are broken", BROKEN_HINT)
        if reduce is not None:
            position.sums, position.seen, position.skipped = reduce(position.sums, position.seen, position.skipped)
        summary = {k: v / max(position.seen, 1) for k, v in position.sums.items()}
        summary["loss"] = sum(summary.values())
        summary["images_per_second"] = position.seen / max(position.seconds, 1e-9)
        summary["seconds"] = position.seconds
        if position.skipped:
            summary["skipped_batches"] = position.skipped
        if position.scaler_skipped:  # same on every rank: DDP averages the gradients first
            summary["scaler_skipped_steps"] = position.scaler_skipped
        position.epoch += 1
        position.step_in_epoch = 0
        position.sums, position.seen, position.skipped, position.seconds = {}, 0, 0, 0.0
        position.scaler_skipped = 0
        if on_epoch_end is not None:
            on_epoch_end(position, summary)
    return position


def run_stage(
    algorithm: Algorithm,
    point: str,
    stage: Stage,
    batches: TrainBatches,
    *,
    progress: bool = True,
    on_nonfinite: str = "stop",
    max_skipped_in_row: int = 10,
) -> dict[str, float]:
    """Perform one pre-training stage declared by a head; returns its mean loss per epoch (and
    the number of batches skipped for a NaN/Inf loss under ``on_nonfinite="skip"``)."""
    assert algorithm.distiller is not None
    head = algorithm.distiller.heads[point]
    dp = next(p for p in algorithm.distiller.points if p.name == point)
    if stage.parameters is not None:
        params = list(stage.parameters())
    else:
        params = list(algorithm.student.parameters())
        for connector in (head.student_connector, head.teacher_connector):
            if connector is not None:
                params += list(connector.parameters())
    params = [p for p in params if p.requires_grad]
    if not params:
        raise UserError(f"stage {stage.name!r} of distill point {point!r} has no trainable parameters")
    if stage.optimizer == "adam":
        optimizer: torch.optim.Optimizer = torch.optim.Adam(params, lr=stage.lr)
    else:
        optimizer = torch.optim.SGD(params, lr=stage.lr, momentum=0.9)
    history: dict[str, float] = {}
    skipped, in_row = 0, 0
    for epoch in range(stage.epochs):
        algorithm.train()
        total, count = 0.0, 0
        for i, batch in enumerate(tqdm(batches.epoch(epoch), total=len(batches), disable=bar_disabled(progress),
                                       desc=f"stage {stage.name} {epoch + 1}/{stage.epochs}", leave=False)):
            step = epoch * len(batches) + i
            student_feature = None
            if stage.needs_student:
                _, features = algorithm.student_forward(batch.inputs)
                student_feature = features[dp.student_tap.key]
            teacher_feature = algorithm.distiller.teacher_features(batch.inputs, indices=batch.indices)[dp.teacher][dp.teacher_tap.key]
            loss = stage.loss(student_feature, teacher_feature, targets=batch.targets,
                              indices=batch.indices, epoch=epoch, step=step)
            value = float(loss.detach())
            if not agreed_finite(math.isfinite(value), on_nonfinite, loss.device):
                if on_nonfinite == "stop":
                    raise NonFiniteLoss(f"stage {stage.name!r} of distill point {point!r}: loss is "
                                        f"{value} at epoch {epoch + 1}, step {step}",
                                        kept=STAGE_KEPT)
                skipped += 1
                in_row += 1
                if in_row >= max_skipped_in_row:
                    raise NonFiniteLoss(f"stage {stage.name!r} of distill point {point!r}: "
                                        f"trainer.on_nonfinite=skip skipped {in_row} batches in a "
                                        f"row (trainer.max_skipped_in_row; the last at epoch "
                                        f"{epoch + 1}, step {step}), so the weights or inputs are "
                                        f"broken", "lower the stage's learning rate", STAGE_KEPT)
                continue
            in_row = 0
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            average_gradients(params)
            optimizer.step()
            total += value * len(batch.indices)
            count += len(batch.indices)
        if count == 0 and len(batches):
            raise NonFiniteLoss(f"stage {stage.name!r} of distill point {point!r}: "
                                f"trainer.on_nonfinite=skip skipped every batch of epoch {epoch + 1} "
                                f"(NaN/Inf losses)", "lower the stage's learning rate", STAGE_KEPT)
        history[f"{stage.name}_epoch{epoch + 1}"] = total / max(count, 1)
    if skipped:
        history[f"{stage.name}_skipped_batches"] = skipped
    return history


def describe_epoch(epoch: int, epochs: int, train: dict[str, float], scores: dict[str, Any]) -> str:
    terms = {k: v for k, v in train.items() if k not in NOT_TERMS}
    parts = [f"epoch {epoch}/{epochs}", f"loss {train['loss']:.4f} ({format_terms(terms)})"]
    for name, value in scores.items():
        parts.append(f"{name} {value:.2f}")
    parts.append(f"{train['images_per_second']:.0f} img/s")
    return "  ".join(parts)
