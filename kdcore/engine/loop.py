"""The training loop. Read :func:`train_epochs` top to bottom: batches -> loss terms -> step.

The algorithm says what is minimised (a dict of loss terms); this loop sums the terms,
backpropagates, steps the optimizer and schedule, reports progress, and calls back at the end of
every epoch (evaluation, metrics, checkpoints live in :mod:`kdcore.engine.run`). An algorithm
that owns its step (``optimizers()`` gave a dict) calls ``update(loss, name)`` instead, and the
pre-trainings (FitNets hints, AB, FT) are such steps: one loop, one set of NaN/Inf rules.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Callable
from functools import partial
from typing import Any

import attrs
import torch
from torch import nn
from tqdm import tqdm

from ..components import Algorithm, PreTraining
from ..errors import UserError
from .batches import TrainBatches
from .distributed import all_ranks, average_gradients, reduce_sums


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


#: what a stop inside a pre-training keeps
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
    ok = torch.stack([flag.to(flags[0].device) for flag in flags]).tolist()  # one copy to the host
    return [name for name, good in zip(names, ok) if not good]


@attrs.define
class TrainingState:
    """Where training stands (epoch, step) and the tallies of the epoch in progress (loss sums,
    samples seen, skips, seconds): what a resumed run needs to continue exactly. ``last.pt``
    saves it as ``position`` (``attrs.asdict``; the same keys since kdcore 0.1)."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    sums: dict[str, float] = attrs.field(factory=dict)
    seen: int = 0
    skipped: int = 0
    seconds: float = 0.0
    scaler_skipped: int = 0
    skipped_in_row: int = 0

    def tally(self, values: dict[str, float], n: int) -> None:
        """Add a batch of ``n`` samples that was not skipped."""
        self.skipped_in_row = 0
        for name, value in values.items():
            self.sums[name] = self.sums.get(name, 0.0) + value * n
        self.seen += n

    def means(self) -> dict[str, float]:
        return {k: v / max(self.seen, 1) for k, v in self.sums.items()}

    def close_epoch(self) -> dict[str, float]:
        """The epoch's summary (mean terms, their sum as ``loss``, speed, skips); the tallies
        start again for the next epoch."""
        summary = self.means()
        summary["loss"] = sum(summary.values())
        summary["images_per_second"] = self.seen / max(self.seconds, 1e-9)
        summary["seconds"] = self.seconds
        if self.skipped:
            summary["skipped_batches"] = self.skipped
        if self.scaler_skipped:  # same on every rank: DDP averages the gradients first
            summary["scaler_skipped_steps"] = self.scaler_skipped
        self.epoch += 1
        self.step_in_epoch, self.sums, self.seen, self.skipped = 0, {}, 0, 0
        self.seconds, self.scaler_skipped = 0.0, 0
        return summary


#: the name of the engine's one optimizer: the default path (``Algorithm.optimizers()`` is None)
ENGINE_OPTIMIZER = ""


@attrs.define
class LoopSettings:
    """How :func:`train_epochs` trains; :meth:`of` reads the ``trainer:`` part from a config.

    :param optimizers: ``{name: optimizer}``, each with its schedule under the same name in
        ``schedulers`` (stepped once per batch; a name without one keeps its rate). The default
        path is one optimizer named :data:`ENGINE_OPTIMIZER`, stepped on the sum of
        ``training_step``'s terms; any other names are an algorithm's own (its ``optimizers()``),
        stepped by its ``optimization_step`` through ``update(loss, name)``. Such an algorithm
        is not DDP-wrapped (``step_module`` is not used): ``update`` averages its gradients, and
        a batch with any skipped update counts as one skipped batch.
    :param on_nonfinite: ``stop`` raises :class:`NonFiniteLoss` at a NaN/Inf loss; ``skip`` skips
        the batch, but stops once ``max_skipped_in_row`` batches in a row, or every batch of an
        epoch, were skipped: the weights are then broken, and a run that went on would export them.
    :param grad_clip: the gradient norm to clip to (0 or ``None``: no clipping).
    :param amp: ``none``, ``bf16`` or ``fp16`` (autocast forward passes; fp16 scales the loss with
        ``scaler``, a fresh one by default: a caller that checkpoints it passes its own).
    :param step_module: replaces ``algorithm.training_step`` (a DDP wrapper of it).
    :param reduce: combines the epoch's loss sums across processes.
    :param on_step: ``on_step(state)`` after every step; ``on_epoch_end(state, summary)`` after
        every epoch.
    """

    epochs: int
    optimizers: dict[str, torch.optim.Optimizer] = attrs.field(factory=dict)
    schedulers: dict[str, torch.optim.lr_scheduler.LRScheduler] = attrs.field(factory=dict)
    on_nonfinite: str = "stop"
    max_skipped_in_row: int = 10
    grad_clip: float | None = None
    progress: bool = True
    label: str = "train"
    amp: str = "none"
    scaler: torch.amp.GradScaler | None = None
    step_module: Callable[..., dict[str, torch.Tensor]] | None = None
    reduce: Callable[..., tuple[dict[str, float], int]] | None = None
    on_step: Callable[[TrainingState], None] | None = None
    on_epoch_end: Callable[[TrainingState, dict[str, float]], None] | None = None

    @classmethod
    def of(cls, trainer: Any, **more: Any) -> LoopSettings:
        """The settings a config's ``trainer:`` gives; ``more`` sets the others (or overrides)."""
        given = {"epochs": trainer.epochs, "on_nonfinite": trainer.on_nonfinite,
                 "max_skipped_in_row": trainer.max_skipped_in_row, "grad_clip": trainer.grad_clip,
                 "progress": trainer.progress, "amp": trainer.amp}
        return cls(**{**given, **more})


def check_holds_each_once(algorithm: Any, params: list[Any], what: str) -> None:
    """``params`` (what ``what`` gave) must be every trainable parameter, each once."""
    seen = [id(p) for p in params]
    trainable = {id(p) for p in algorithm.trainable_parameters()}
    if len(seen) != len(set(seen)) or set(seen) != trainable:
        names = {id(p): n for n, p in algorithm.named_parameters()}
        missing = [names.get(i, "?") for i in trainable - set(seen)][:3]
        extra = [names.get(i, "?") for i in set(seen) - trainable][:3]
        repeated = sorted({names.get(i, "?") for i in seen if seen.count(i) > 1})[:3]
        raise UserError(f"algorithm {type(algorithm).__name__}: {what} must hold every "
                        f"trainable parameter exactly once (missing {missing}, not trainable "
                        f"{extra}, repeated {repeated})")


def checked_own_optimizers(algorithm: Any, build: Callable[[list[dict[str, Any]]], torch.optim.Optimizer]
                           ) -> dict[str, torch.optim.Optimizer] | None:
    """``algorithm.optimizers(build)``: None (the default path), or ``{name: optimizer}`` with
    non-empty names that together hold every trainable parameter once (the run and the
    contract kit check alike)."""
    own = algorithm.optimizers(build)
    if own is None:
        return None
    if not (isinstance(own, dict) and own and all(isinstance(n, str) and n and isinstance(
            o, torch.optim.Optimizer) for n, o in own.items())):
        raise UserError(f"algorithm {type(algorithm).__name__}: optimizers() must return None "
                        f"or {{name: torch optimizer}} with non-empty names, got {own!r:.80}")
    check_holds_each_once(algorithm, [p for o in own.values() for g in o.param_groups for p in g["params"]],
                          "optimizers()")
    return dict(own)


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
    return torch.stack(values).tolist() if values else []


def nonfinite_term(values: dict[str, float]) -> str:
    """Which of a step's terms broke it, for the stop message."""
    bad = next((k for k, v in values.items() if not math.isfinite(v)), None)
    total = sum(values.values())
    return (f"term {bad!r} is {values[bad]}" if bad is not None else
            f"terms sum to {total}" if not math.isfinite(total) else
            "term on another process is NaN/Inf")


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


class Update:
    """``update(loss, name) -> bool``: one step of optimizer ``name`` on ``loss``, True when it
    stepped. The NaN/Inf rules (:meth:`finite`) and the step itself (:meth:`apply`: backward,
    fp16 loss scaling, clipping, optimizer step) are written here once, for the default path
    (:meth:`step_on_sum`), the algorithms that own their step and the pre-trainings alike."""

    def __init__(self, settings: LoopSettings, state: TrainingState) -> None:
        self.optimizers, self.settings, self.state = settings.optimizers, settings, state
        self.own = ENGINE_OPTIMIZER not in self.optimizers  # the algorithm calls update() itself
        self.params = {name: [p for group in optimizer.param_groups for p in group["params"]]
                       for name, optimizer in self.optimizers.items()}
        first = next((ps[0] for ps in self.params.values() if ps), None)
        self.device = first.device if first is not None else torch.device("cpu")
        # fp16 scales the loss; otherwise a disabled scaler passes loss, gradients and step through
        fp16 = settings.amp == "fp16"
        self.scaler = settings.scaler or torch.amp.GradScaler(self.device.type, enabled=fp16)
        self.new_batch()

    def new_batch(self) -> None:
        self.stepped = dict.fromkeys(self.optimizers, False)
        self.skipped: str | None = None  # where the batch's last skipped update was
        self.read: dict[str, float] = {}  # each update's loss, by optimizer name, as read

    def __call__(self, loss: torch.Tensor, name: str) -> bool:
        """An own-step algorithm's update: its loss is read (one sync, kept in ``read``),
        checked, stepped."""
        if name not in self.optimizers:
            raise UserError(f"update(loss, {name!r}): the algorithm's optimizers() has no optimizer "
                            f"{name!r}; it has {', '.join(map(repr, self.optimizers))}")
        loss = _scalar(name, loss)
        value = self.read[name] = loss.item()
        # named when there are several (DML's students); a pre-training's stop says "loss is nan"
        # after its own name, as in kdcore 0.1.7
        what = lambda: (f"for optimizer {name!r} " if len(self.optimizers) > 1 else "") + (  # noqa: E731
            f"is {value}" if not math.isfinite(value) else "on another process is NaN/Inf")
        if not self.finite(math.isfinite(value), what):
            return False
        if self.settings.amp == "none":
            return self.apply(loss, name)
        with torch.autocast(self.device.type, enabled=False):  # the forward ran under autocast
            return self.apply(loss, name)

    def step_on_sum(self, terms: dict[str, torch.Tensor]) -> dict[str, float]:
        """The default path: the terms are added, read once, checked, and the engine's optimizer
        steps on their sum; returns the terms as read."""
        loss, scalars = sum_terms(terms)
        values = dict(zip(terms, read_values(scalars)))
        if self.finite(math.isfinite(sum(values.values())), partial(nonfinite_term, values)):
            self.apply(loss, ENGINE_OPTIMIZER)
        return values

    def finite(self, finite: bool, what: Callable[[], str]) -> bool:
        """``trainer.on_nonfinite``: under ``stop`` a NaN/Inf loss raises; under ``skip`` the
        update is skipped (False) and the batch marked skipped (:func:`count_skip`). Under
        ``skip`` every DDP rank skips a batch, or none does: a lone skip would leave the others
        waiting in DDP's all-reduce."""
        if self.settings.on_nonfinite == "skip":
            finite = all_ranks(finite, self.device)
        if finite:
            return True
        where = f"loss {what()} at epoch {self.state.epoch + 1}, step {self.state.global_step}"
        if self.settings.on_nonfinite == "stop":
            raise NonFiniteLoss(where)
        self.skipped = where
        return False

    def apply(self, loss: torch.Tensor, name: str) -> bool:
        """Backpropagate ``loss`` and step optimizer ``name``; False when fp16's loss scaler
        skipped the step (Inf/NaN gradients). An own-step algorithm is not DDP-wrapped, so its
        gradients are averaged across processes here."""
        optimizer, params, scaler = self.optimizers[name], self.params[name], self.scaler
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if self.own:
            average_gradients(params)
        scaler.unscale_(optimizer)
        if self.settings.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, self.settings.grad_clip)
        stepped = not (scaler.is_enabled() and overflowed(scaler, optimizer))  # GradScaler's own decision
        self.state.scaler_skipped += not stepped
        if stepped:  # a skipped step is not handed to the optimizer: fused SGD's first step makes
            scaler.step(optimizer)  # momentum with empty_like, filled only if the step is taken
        scaler.update()  # unscale_ recorded the overflow it adjusts the scale by
        self.stepped[name] = self.stepped[name] or stepped
        return stepped


def count_skip(state: TrainingState, settings: LoopSettings, where: str) -> None:
    """Count a batch skipped under ``trainer.on_nonfinite=skip``; stop once
    ``max_skipped_in_row`` in a row were: the weights are broken then."""
    state.skipped += 1
    state.skipped_in_row += 1
    if state.skipped_in_row >= settings.max_skipped_in_row:
        raise NonFiniteLoss(
            f"trainer.on_nonfinite=skip skipped {state.skipped_in_row} batches in a row "
            f"(trainer.max_skipped_in_row; the last: {where}), so the weights or inputs are "
            f"broken", BROKEN_HINT)


def train_epochs(algorithm: nn.Module, batches: TrainBatches, state: TrainingState,
                 settings: LoopSettings) -> TrainingState:
    """Train from ``state`` until ``settings.epochs`` are done; returns the final state.

    The default path: ``training_step``'s terms are added, checked and read once, and the
    engine's optimizer steps on their sum. An algorithm that owns its step (its optimizers'
    names in ``settings.optimizers``) calls ``update(loss, name)`` from its ``optimization_step``
    and returns the terms to log (or None, as a pre-training does: the losses ``update`` read,
    by optimizer name). Every schedule steps once per batch."""
    s = settings
    update = Update(s, state)
    if update.own:
        step = partial(algorithm.optimization_step, update=update)
    else:  # the algorithm, or its DDP wrapper
        step = s.step_module if s.step_module is not None else algorithm.training_step
    # trainer.amp: the forward passes autocast (losses upcast as they need), the backward does not
    low = torch.bfloat16 if s.amp == "bf16" else torch.float16
    precision = (torch.autocast(update.device.type, dtype=low) if s.amp != "none"
                 else contextlib.nullcontext())  # nothing entered each step without AMP
    while state.epoch < s.epochs:
        algorithm.train()
        started = time.perf_counter() - state.seconds
        bar = tqdm(total=len(batches), initial=state.step_in_epoch, disable=bar_disabled(s.progress),
                   desc=f"{s.label} {state.epoch + 1}/{s.epochs}", leave=False, dynamic_ncols=True)
        for batch in batches.epoch(state.epoch, state.step_in_epoch):
            update.new_batch()
            with precision:
                terms = step(batch, epoch=state.epoch, step=state.global_step)
            if not update.own:
                values = update.step_on_sum(terms)
            elif terms is None:
                values = update.read
            else:
                values = dict(zip(terms, read_values([_scalar(k, v) for k, v in terms.items()])))
            if update.skipped is None:
                state.tally(values, batch.indices.shape[0])  # not len(): Tensor.__len__ is Python
            else:
                count_skip(state, s, update.skipped)
            for name, schedule in s.schedulers.items():
                step_schedule(schedule, update.stepped[name])
            state.step_in_epoch += 1
            state.global_step += 1
            state.seconds = time.perf_counter() - started
            if bar.update(1):  # redrawn (tqdm does so a few times a second): the running means too
                bar.set_postfix_str(f"{format_terms(state.means())} | "
                                    f"{state.seen / max(state.seconds, 1e-9):.0f} img/s", refresh=False)
            if s.on_step is not None:
                s.on_step(state)
        bar.close()
        if state.skipped >= len(batches) > 0:  # before the epoch's checkpoint and metrics row
            raise NonFiniteLoss(f"trainer.on_nonfinite=skip skipped all {state.skipped} batches "
                                f"of {s.label} epoch {state.epoch + 1} (NaN/Inf losses), so the "
                                f"weights or inputs are broken", BROKEN_HINT)
        if s.reduce is not None:
            state.sums, state.seen = s.reduce(state.sums, state.seen)
        summary = state.close_epoch()
        if s.on_epoch_end is not None:
            s.on_epoch_end(state, summary)
    return state


class PreTrainingStep(nn.Module):
    """A pre-training as an algorithm that owns its step: one optimizer, named after it, on its
    loss of the tapped features of one distill point."""

    def __init__(self, algorithm: Algorithm, point: str, pretraining: PreTraining) -> None:
        super().__init__()
        assert algorithm.distiller is not None
        self.algorithm, self.pretraining = algorithm, pretraining
        self.point = next(p for p in algorithm.distiller.points if p.name == point)

    def optimization_step(self, batch: Any, *, epoch: int, step: int,
                          update: Callable[[torch.Tensor, str], bool]) -> None:
        """One update; the loop logs the loss ``update`` read, under the pre-training's name."""
        algorithm, dp = self.algorithm, self.point
        student_feature = None
        if self.pretraining.needs_student:
            student_feature = algorithm.student_forward(batch.inputs)[1][dp.student_tap.key]
        teacher_feature = algorithm.distiller.teacher_features(
            batch.inputs, indices=batch.indices)[dp.teacher][dp.teacher_tap.key]
        loss = self.pretraining.loss(student_feature, teacher_feature, targets=batch.targets,
                                     indices=batch.indices, epoch=epoch, step=step)
        update(loss, self.pretraining.name)


def pretraining_optimizer(algorithm: Algorithm, point: str, pretraining: PreTraining) -> torch.optim.Optimizer:
    """The pre-training's own optimizer over what it trains (by default the student and the
    head's connectors)."""
    assert algorithm.distiller is not None
    head = algorithm.distiller.heads[point]
    modules = [algorithm.student, head.student_connector, head.teacher_connector]
    if pretraining.parameters is not None:
        params = list(pretraining.parameters())
    else:
        params = [p for module in modules if module is not None for p in module.parameters()]
    params = [p for p in params if p.requires_grad]
    if not params:
        raise UserError(f"stage {pretraining.name!r} of distill point {point!r} has no trainable parameters")
    if pretraining.optimizer == "adam":
        return torch.optim.Adam(params, lr=pretraining.lr)
    return torch.optim.SGD(params, lr=pretraining.lr, momentum=0.9)


def run_stage(algorithm: Algorithm, point: str, pretraining: PreTraining, batches: TrainBatches,
              settings: LoopSettings) -> dict[str, float]:
    """Perform one pre-training declared by a head, through :func:`train_epochs` with the run's
    NaN/Inf rules, clipping, AMP and progress (``settings``), its own optimizer and a constant
    learning rate (no schedule); returns its mean loss per epoch (and the batches skipped for
    NaN/Inf)."""
    name = pretraining.name
    history: dict[str, float] = {}
    skipped = 0

    def on_epoch_end(state: TrainingState, summary: dict[str, float]) -> None:
        nonlocal skipped
        history[f"{name}_epoch{state.epoch}"] = summary[name]
        skipped += int(summary.get("skipped_batches", 0))

    loop = attrs.evolve(settings, epochs=pretraining.epochs, label=f"stage {name}", reduce=reduce_sums,
                        on_epoch_end=on_epoch_end,
                        optimizers={name: pretraining_optimizer(algorithm, point, pretraining)})
    try:
        train_epochs(PreTrainingStep(algorithm, point, pretraining), batches, TrainingState(), loop)
    except NonFiniteLoss as exc:
        raise NonFiniteLoss(f"stage {name!r} of distill point {point!r}: {exc.detail}", exc.hint,
                            STAGE_KEPT) from None
    if skipped:
        history[f"{name}_skipped_batches"] = skipped
    return history


def describe_epoch(epoch: int, epochs: int, train: dict[str, float], scores: dict[str, Any]) -> str:
    terms = {k: v for k, v in train.items() if k not in NOT_TERMS}
    parts = [f"epoch {epoch}/{epochs}", f"loss {train['loss']:.4f} ({format_terms(terms)})"]
    for name, value in scores.items():
        parts.append(f"{name} {value:.2f}")
    parts.append(f"{train['images_per_second']:.0f} img/s")
    return "  ".join(parts)
