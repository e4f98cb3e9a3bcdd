"""Seeded batches over a training split, resumable at any step.

Epoch ``e`` visits the samples in the order of a permutation drawn from ``seed`` and ``e``
alone, so a run resumed at (epoch, step) sees exactly the batches the uninterrupted run saw.
In-memory splits (:class:`TensorSplit`) are batched by indexing one big tensor; other data sets
go through a ``DataLoader`` with the same order.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from ..components import Batch
from ..data import TensorSplit
from ..errors import UserError


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator)


class _WithIndex(Dataset):
    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[Any, Any, int]:
        x, y = self.dataset[i]
        return x, y, i


class TrainBatches:
    """Shuffled training batches; the last incomplete batch is dropped (as BN prefers)."""

    def __init__(self, data: Any, batch_size: int, seed: int, *, device: torch.device,
                 num_workers: int = 0, channels_last: bool = False, rank: int = 0,
                 world: int = 1, augment: Any = None) -> None:
        self.data = data
        if world > 1 and len(data) < world:
            raise UserError(f"data: {len(data)} training images cannot be shared among {world} "
                            f"processes; use more (data.train_limit) or fewer processes")
        self.batch_size = max(1, min(batch_size, len(data)))  # each rank takes batch // world
        self.seed = seed
        self.device = device
        self.num_workers = num_workers
        self.rank, self.world = rank, world
        self.augment = augment  # kdcore.data.augment.BatchAugment, seeded per (epoch, step)
        self.in_memory = isinstance(data, TensorSplit)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        if self.in_memory and device.type != "cpu":
            self.data = TensorSplit(data.inputs.to(device), data.targets.to(device))

    def __len__(self) -> int:
        return len(self.data) // self.batch_size

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
        """The batches of ``epoch``, starting at ``start_step``."""
        order = epoch_order(len(self.data), self.seed, epoch)[: len(self) * self.batch_size]
        order = order[start_step * self.batch_size:]
        step = self.batch_size // self.world  # this rank takes its slice of every global batch
        order = order.view(-1, self.batch_size)[:, self.rank * step:(self.rank + 1) * step].reshape(-1)
        if self.in_memory:  # already on the device: rows taken by index
            batches: Any = ((self.data.inputs[chunk], self.data.targets[chunk], chunk)
                            for chunk in order.to(self.device).split(step))
        else:
            batches = DataLoader(_WithIndex(self.data), batch_size=step, sampler=order.tolist(),
                                 num_workers=self.num_workers, pin_memory=self.device.type == "cuda")
        for i, (inputs, targets, indices) in enumerate(batches, start=start_step):
            if self.augment is not None:
                inputs, targets = self.augment(inputs, targets, self.seed, epoch, i, (self.rank, self.world))
            yield Batch(self._format(inputs), targets, indices).to(self.device)

    def _format(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.memory_format is torch.contiguous_format or inputs.dim() != 4:
            return inputs
        return inputs.contiguous(memory_format=self.memory_format)


def eval_batches(data: Any, batch_size: int, device: torch.device) -> Iterator[tuple[Any, Any]]:
    """The evaluation split in order, ``(inputs, targets)`` on ``device``."""
    if isinstance(data, TensorSplit):
        for start in range(0, len(data), batch_size):
            yield (data.inputs[start:start + batch_size].to(device),
                   data.targets[start:start + batch_size].to(device))
        return
    for inputs, targets in DataLoader(data, batch_size=batch_size, shuffle=False):
        yield inputs.to(device), targets.to(device)
