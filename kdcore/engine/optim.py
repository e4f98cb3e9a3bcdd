"""Optimizers and learning-rate schedules from the config, stepped once per batch."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch

from ..config import OptimizerConfig, ScheduleConfig
from ..errors import UserError


def make_optimizer(params: Iterable[Any], cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """SGD, Adam or AdamW as configured, over parameters or parameter groups (dicts with
    ``params`` and an optional ``lr_scale`` multiplying ``cfg.lr``). ``fused`` (default on) asks
    PyTorch for its fused kernel, one kernel per step instead of several per parameter (same
    update to float rounding); where the parameters' device or dtype has none, the standard one."""
    items = list(params)
    if items and isinstance(items[0], dict):
        groups = [{"params": list(g["params"]), "lr": cfg.lr * float(g.get("lr_scale", 1.0))} for g in items]
        groups = [g for g in groups if g["params"]]
    else:
        groups = [{"params": items}] if items else []
    every = [p for g in groups for p in g["params"]]
    if cfg.type == "sgd":
        cls, options = torch.optim.SGD, dict(lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                                             nesterov=cfg.nesterov and cfg.momentum > 0)
    else:
        cls = torch.optim.Adam if cfg.type == "adam" else torch.optim.AdamW
        options = dict(lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    if cfg.fused and every and _fused_kernels_exist(every):
        try:  # copies: torch writes its settings into the group dicts it is given
            return cls([dict(g) for g in groups], **options, fused=True)
        except (RuntimeError, TypeError, ValueError):  # this torch has no fused kernel for it
            pass
    return cls([dict(g) for g in groups], **options)


def _fused_kernels_exist(params: list[torch.Tensor]) -> bool:
    """Whether PyTorch has fused optimizer kernels for all of ``params`` (torch checks only at
    the first step, too late to fall back)."""
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices
        devices = _get_fused_kernels_supported_devices()
    except ImportError:  # pragma: no cover - older torch
        devices = ["cpu", "cuda"]
    return all(p.is_floating_point() and p.device.type in devices for p in params)


def restore_optimizer(optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LambdaLR,
                      optimizer_state: dict, scheduler_state: dict) -> None:
    """Load a checkpoint's optimizer and schedule state (momentum buffers, step counts, the
    position in the schedule) while keeping what this run is configured with: the kernel
    (``fused``/``foreach``), learning rate, weight decay, momentum, betas. So ``--resume --set
    optimizer.lr=0.01`` takes effect, and a checkpoint from before ``optimizer.fused`` existed
    loads into a fused optimizer (whose flag must match its amp-scaling contract)."""
    configured = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    sizes = [len(group["params"]) for group in optimizer.param_groups]
    saved_ids = [i for group in optimizer_state["param_groups"] for i in group["params"]]
    if len(saved_ids) != sum(sizes):
        raise UserError(f"resume checkpoint: the optimizer was saved with {len(saved_ids)} parameters "
                        f"in {len(optimizer_state['param_groups'])} group(s), the run now has "
                        f"{sum(sizes)} in {len(sizes)}; the model or algorithm changed since")
    # The saved state is keyed by each parameter's position over all groups, so a run whose
    # algorithm now splits the same parameters into other groups (MEAL V2's discriminator got
    # its own) regroups them. And it is loaded with the configured settings, so torch places each
    # state tensor (Adam's step counts) as the configured kernel wants it (fused CUDA: on device).
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    optimizer_state = {**optimizer_state, "param_groups": [
        {**mine, "params": saved_ids[start:start + size]}
        for mine, start, size in zip(configured, starts, sizes)]}
    optimizer.load_state_dict(optimizer_state)
    scheduler.load_state_dict(scheduler_state)
    scheduler.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
    for group, factor, base in zip(optimizer.param_groups, scheduler.lr_lambdas, scheduler.base_lrs):
        group["lr"] = base * factor(scheduler.last_epoch)  # what LambdaLR.step sets
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


def lr_schedule(cfg: ScheduleConfig, steps_per_epoch: int, epochs: int) -> Callable[[int], float]:
    """``step -> multiplier of the base learning rate``, with the run's constants worked out
    once (the scheduler calls it every step)."""
    total = max(1, steps_per_epoch * epochs)
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    span = max(1, total - warmup)
    kind, gamma, milestones, per_epoch = cfg.type, cfg.gamma, tuple(cfg.milestones), max(1, steps_per_epoch)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if kind == "constant":
            return 1.0
        if kind == "step":
            epoch = step // per_epoch
            return gamma ** sum(epoch >= m for m in milestones)
        progress = min(1.0, (step - warmup) / span)
        if kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        # onecycle: linear rise over the first 30% (after any warm-up), then cosine decay to zero
        if progress < 0.3:
            return 0.1 + 0.9 * progress / 0.3
        return 0.5 * (1.0 + math.cos(math.pi * (progress - 0.3) / 0.7))

    return factor


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, steps_per_epoch: int,
                   epochs: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_schedule(cfg, steps_per_epoch, epochs))
