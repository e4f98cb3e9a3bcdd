"""Scoring models on an evaluation split with the task's metric."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .batches import eval_batches
from .frozen import frozen_pass


def evaluate(model: nn.Module, data: Any, task: Any, *, batch_size: int,
             device: torch.device, frozen: bool = False) -> dict[str, float]:
    """The task's metric of ``model`` on ``data``, in eval mode and without autograd.

    ``frozen``: the model is a frozen teacher, so it runs under :func:`frozen_pass`'s mode
    (``inference_mode`` unless compiled). Not for a model that trains on afterwards: a tensor
    it creates and keeps during the pass (a lazily built cache) would be an inference tensor,
    which autograd refuses later."""
    was_training = model.training
    model.eval()
    metric = task.new_metric()
    try:
        with frozen_pass(model) if frozen else torch.no_grad():
            for inputs, targets in eval_batches(data, batch_size, device):
                metric.update(model(inputs), targets)
    finally:
        model.train(was_training)
    return metric.compute()
