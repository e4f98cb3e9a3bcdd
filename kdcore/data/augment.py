"""Random augmentations done on whole batches, for in-memory splits.

The per-sample path augments image by image in a DataLoader; an in-memory split is batched by
indexing one tensor, so its augmentations work on the batch: one random offset and flip per
sample, drawn from a generator seeded by (run seed, epoch, step). The same step of the same run
always gets the same augmentation, so a resumed run sees exactly the batches it would have seen.
Under DDP every process draws the values of the whole global batch and keeps its own rows, so a
sample is augmented alike whatever the number of processes.

Targets move with the pixels as the task's ``target_kind`` says (:mod:`kdcore.task`): class
labels stay, segmentation masks are shifted and flipped like the image (the padding gets the
task's ``ignore_index``), and boxes ``(N, M, 5)`` are shifted, clipped to the image and dropped
(class -1) once nothing of them is left inside. An augmentation that cannot move a task's
targets is refused by name when the run starts.

Config: ``data.augment: [{type: random_crop, padding: 4}, {type: hflip}]``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..errors import UserError, did_you_mean
from ..registry import call_factory


def _rows(values: torch.Tensor, b: int, part: tuple[int, int]) -> torch.Tensor:
    """This process's ``b`` rows of values drawn for the global batch (``part`` = (rank, world))."""
    return values[part[0] * b:(part[0] + 1) * b]


def _shift(x: torch.Tensor, oy: torch.Tensor, ox: torch.Tensor, p: int, fill: float) -> torch.Tensor:
    """``x`` (B, C, H, W) padded by ``p`` with ``fill`` and cropped back at offsets (oy, ox)."""
    b, _, h, w = x.shape
    padded = F.pad(x, (p, p, p, p), value=fill)
    rows = (oy[:, None] + torch.arange(h, device=x.device))[:, :, None]  # (B, H, 1)
    cols = (ox[:, None] + torch.arange(w, device=x.device))[:, None, :]  # (B, 1, W)
    batch = torch.arange(b, device=x.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2).contiguous()


def _clip_boxes(boxes: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Boxes clipped to the image; one with no area left inside becomes padding (all -1).
    Rows that are not boxes (class < 0: padding -1, an unlabelled scene's marker -2) are their
    class value throughout, whatever the move did to their coordinates."""
    limit = boxes.new_tensor([w, h, w, h])
    xyxy = torch.minimum(boxes[..., :4].clamp(min=0), limit)
    real = boxes[..., 4:] >= 0
    keep = real[..., 0] & (xyxy[..., 2] > xyxy[..., 0]) & (xyxy[..., 3] > xyxy[..., 1])
    out = torch.cat([xyxy, boxes[..., 4:]], dim=-1)
    return torch.where(keep[..., None], out, torch.where(real, -1.0, boxes[..., 4:]).expand_as(out))


class RandomCrop:
    """Pad by ``padding`` on every side with ``fill``, then crop back at a random offset.

    ``fill`` is in the normalised space of the inputs (0.0 is the data set's mean).
    """

    moves = ("label", "mask", "boxes")

    def __init__(self, padding: int = 4, fill: float = 0.0) -> None:
        if padding < 0:
            raise UserError(f"random_crop: padding must be >= 0, got {padding}")
        self.padding, self.fill = int(padding), float(fill)

    def __call__(self, x: torch.Tensor, generator: torch.Generator, part: tuple[int, int] = (0, 1)) -> torch.Tensor:
        return self.apply(x, None, generator, part)[0]

    def apply(self, x: torch.Tensor, targets: Any, generator: torch.Generator,
              part: tuple[int, int] = (0, 1), kind: str = "label", mask_fill: int = 255) -> tuple[torch.Tensor, Any]:
        p = self.padding
        if p == 0:
            return x, targets
        b, _, h, w = x.shape
        oy = _rows(torch.randint(0, 2 * p + 1, (b * part[1],), generator=generator), b, part).to(x.device)
        ox = _rows(torch.randint(0, 2 * p + 1, (b * part[1],), generator=generator), b, part).to(x.device)
        x = _shift(x, oy, ox, p, self.fill)
        if kind == "mask":
            targets = _shift(targets[:, None], oy, ox, p, mask_fill)[:, 0]
        elif kind == "boxes":
            # output pixel (r, c) shows input pixel (r + oy - p, c + ox - p)
            delta = torch.stack([ox, oy, ox, oy], 1).to(targets.dtype)[:, None, :] - p
            moved = torch.cat([targets[..., :4] - delta, targets[..., 4:]], dim=-1)
            targets = _clip_boxes(moved, h, w)
        return x, targets


class HorizontalFlip:
    """Mirror each sample left-right with probability ``p``."""

    moves = ("label", "mask", "boxes")

    def __init__(self, p: float = 0.5) -> None:
        if not 0.0 <= p <= 1.0:
            raise UserError(f"hflip: p must lie in [0, 1], got {p}")
        self.p = float(p)

    def __call__(self, x: torch.Tensor, generator: torch.Generator, part: tuple[int, int] = (0, 1)) -> torch.Tensor:
        return self.apply(x, None, generator, part)[0]

    def apply(self, x: torch.Tensor, targets: Any, generator: torch.Generator,
              part: tuple[int, int] = (0, 1), kind: str = "label", mask_fill: int = 255) -> tuple[torch.Tensor, Any]:
        b, w = x.shape[0], x.shape[-1]
        flip = (_rows(torch.rand(b * part[1], generator=generator), b, part) < self.p).to(x.device)
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        if kind == "mask":
            targets = torch.where(flip[:, None, None], targets.flip(-1), targets)
        elif kind == "boxes":
            mirrored = torch.stack([w - targets[..., 2], targets[..., 1], w - targets[..., 0],
                                    targets[..., 3], targets[..., 4]], dim=-1)
            mirrored = torch.where(targets[..., 4:] >= 0, mirrored, targets)  # padding stays -1
            targets = torch.where(flip[:, None, None], mirrored, targets)
        return x, targets


AUGMENTATIONS: dict[str, Any] = {"random_crop": RandomCrop, "hflip": HorizontalFlip}


def build_augment(configs: list[Any], task: Any = None) -> "BatchAugment | None":
    """The ``data.augment`` list as one callable, or ``None`` when it is empty. ``task`` (the data
    set's) says how targets move; an augmentation that cannot move them is refused by name."""
    kind = getattr(task, "target_kind", "label")
    steps = []
    for i, cfg in enumerate(configs):
        if cfg.type not in AUGMENTATIONS:
            raise UserError(f"config key data.augment[{i}].type: unknown augmentation {cfg.type!r}"
                            f"{did_you_mean(cfg.type, AUGMENTATIONS)}; choose from "
                            f"{', '.join(AUGMENTATIONS)}")
        step = call_factory(AUGMENTATIONS[cfg.type], cfg.params, {}, where=f"data.augment[{i}]")
        if kind not in getattr(step, "moves", ("label",)):
            raise UserError(f"config key data.augment[{i}].type: {cfg.type!r} cannot move this data "
                            f"set's targets ({kind}); remove it from data.augment")
        steps.append(step)
    if not steps:
        return None
    return BatchAugment(steps, kind, getattr(task, "ignore_index", 255))


class BatchAugment:
    """The augmentations in order, with the generator of (seed, epoch, step); targets of
    ``kind`` move with the pixels (``mask_fill`` fills a mask's padding)."""

    def __init__(self, steps: list[Any], kind: str = "label", mask_fill: int = 255) -> None:
        self.steps, self.kind, self.mask_fill = steps, kind, mask_fill

    def __call__(self, x: torch.Tensor, targets: Any, seed: int, epoch: int, step: int,
                 part: tuple[int, int] = (0, 1)) -> tuple[torch.Tensor, Any]:
        """Augment ``x`` and its ``targets``, this process's rows of the global batch ``step``;
        ``part`` = (rank, world)."""
        # modulo 2^64: the same seed as before for every seed small enough not to overflow
        generator = torch.Generator().manual_seed(((seed * 1_000_003 + epoch) * 1_000_033 + step) % 2**64)
        for augment in self.steps:
            x, targets = augment.apply(x, targets, generator, part, self.kind, self.mask_fill)
        return x, targets
