"""Random augmentations done on whole batches, for in-memory splits.

The per-sample path augments image by image in a DataLoader; an in-memory split is batched by
indexing one tensor, so its augmentations work on the batch: one random offset and flip per
sample, drawn from a generator seeded by (run seed, epoch, step). The same step of the same run
always gets the same augmentation, so a resumed run sees exactly the batches it would have seen.
Under DDP every process draws the values of the whole global batch and keeps its own rows, so a
sample is augmented alike whatever the number of processes.

Config: ``data.augment: [{type: random_crop, padding: 4}, {type: hflip}]``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import UserError, did_you_mean
from ..registry import call_factory


def _rows(values: torch.Tensor, b: int, part: tuple[int, int]) -> torch.Tensor:
    """This process's ``b`` rows of values drawn for the global batch (``part`` = (rank, world))."""
    return values[part[0] * b:(part[0] + 1) * b]


class RandomCrop:
    """Pad by ``padding`` on every side with ``fill``, then crop back at a random offset.

    ``fill`` is in the normalised space of the inputs (0.0 is the data set's mean).
    """

    def __init__(self, padding: int = 4, fill: float = 0.0) -> None:
        if padding < 0:
            raise UserError(f"random_crop: padding must be >= 0, got {padding}")
        self.padding, self.fill = int(padding), float(fill)

    def __call__(self, x: torch.Tensor, generator: torch.Generator, part: tuple[int, int] = (0, 1)) -> torch.Tensor:
        p = self.padding
        if p == 0:
            return x
        b, _, h, w = x.shape
        padded = F.pad(x, (p, p, p, p), value=self.fill)
        oy = _rows(torch.randint(0, 2 * p + 1, (b * part[1],), generator=generator), b, part).to(x.device)
        ox = _rows(torch.randint(0, 2 * p + 1, (b * part[1],), generator=generator), b, part).to(x.device)
        rows = (oy[:, None] + torch.arange(h, device=x.device))[:, :, None]  # (B, H, 1)
        cols = (ox[:, None] + torch.arange(w, device=x.device))[:, None, :]  # (B, 1, W)
        batch = torch.arange(b, device=x.device)[:, None, None]
        return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2).contiguous()


class HorizontalFlip:
    """Mirror each sample left-right with probability ``p``."""

    def __init__(self, p: float = 0.5) -> None:
        if not 0.0 <= p <= 1.0:
            raise UserError(f"hflip: p must lie in [0, 1], got {p}")
        self.p = float(p)

    def __call__(self, x: torch.Tensor, generator: torch.Generator, part: tuple[int, int] = (0, 1)) -> torch.Tensor:
        b = x.shape[0]
        flip = (_rows(torch.rand(b * part[1], generator=generator), b, part) < self.p).to(x.device)
        return torch.where(flip[:, None, None, None], x.flip(-1), x)


AUGMENTATIONS: dict[str, Callable[..., Any]] = {"random_crop": RandomCrop, "hflip": HorizontalFlip}


def build_augment(configs: list[Any]) -> "BatchAugment | None":
    """The ``data.augment`` list as one callable, or ``None`` when it is empty."""
    steps = []
    for i, cfg in enumerate(configs):
        if cfg.type not in AUGMENTATIONS:
            raise UserError(f"config key data.augment[{i}].type: unknown augmentation {cfg.type!r}"
                            f"{did_you_mean(cfg.type, AUGMENTATIONS)}; choose from "
                            f"{', '.join(AUGMENTATIONS)}")
        steps.append(call_factory(AUGMENTATIONS[cfg.type], cfg.params, {}, where=f"data.augment[{i}]"))
    return BatchAugment(steps) if steps else None


class BatchAugment:
    """The augmentations in order, with the generator of (seed, epoch, step)."""

    def __init__(self, steps: list[Callable[..., torch.Tensor]]) -> None:
        self.steps = steps

    def __call__(self, x: torch.Tensor, seed: int, epoch: int, step: int,
                 part: tuple[int, int] = (0, 1)) -> torch.Tensor:
        """Augment ``x``, this process's rows of the global batch ``step``; ``part`` = (rank, world)."""
        generator = torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 1_000_033 + step)
        for augment in self.steps:
            x = augment(x, generator, part)
        return x
