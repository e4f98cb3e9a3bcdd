"""Optimizers and learning-rate schedules from the config, stepped once per batch."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from ..config import OptimizerConfig, ScheduleConfig


def make_optimizer(params: Iterable[torch.nn.Parameter], cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """SGD, Adam or AdamW as configured. ``fused`` (default on) asks PyTorch for its fused kernel,
    one kernel per step instead of several per parameter (same update to float rounding); where
    the parameters' device or dtype has none, the standard implementation is used."""
    params = list(params)
    if cfg.type == "sgd":
        cls, options = torch.optim.SGD, dict(lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                                             nesterov=cfg.nesterov and cfg.momentum > 0)
    else:
        cls = torch.optim.Adam if cfg.type == "adam" else torch.optim.AdamW
        options = dict(lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    if cfg.fused and params:
        try:
            return cls(params, **options, fused=True)
        except (RuntimeError, TypeError, ValueError):  # no fused kernel for this device or dtype
            pass
    return cls(params, **options)


def lr_factor(cfg: ScheduleConfig, step: int, steps_per_epoch: int, epochs: int) -> float:
    """Multiplier of the base learning rate at global ``step`` (0-based)."""
    total = max(1, steps_per_epoch * epochs)
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    if step < warmup:
        return (step + 1) / warmup
    if cfg.type == "constant":
        return 1.0
    if cfg.type == "step":
        epoch = step // max(1, steps_per_epoch)
        return cfg.gamma ** sum(epoch >= m for m in cfg.milestones)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if cfg.type == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    # onecycle: linear rise over the first 30% (after any warm-up), then cosine decay to zero
    if progress < 0.3:
        return 0.1 + 0.9 * progress / 0.3
    return 0.5 * (1.0 + math.cos(math.pi * (progress - 0.3) / 0.7))


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, steps_per_epoch: int,
                   epochs: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(cfg, step, steps_per_epoch, epochs))
