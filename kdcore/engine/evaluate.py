"""Scoring models on an evaluation split with the task's metric."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .batches import eval_batches


@torch.no_grad()
def evaluate(model: nn.Module, data: Any, task: Any, *, batch_size: int,
             device: torch.device) -> dict[str, float]:
    was_training = model.training
    model.eval()
    metric = task.new_metric()
    try:
        for inputs, targets in eval_batches(data, batch_size, device):
            metric.update(model(inputs), targets)
    finally:
        model.train(was_training)
    return metric.compute()
