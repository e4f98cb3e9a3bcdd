"""Semantic segmentation: per-pixel cross-entropy, and mIoU from one confusion matrix.

Outputs are logits ``(N, C, H, W)`` at the targets' resolution; targets are ``(N, H, W)``
integer masks (any integer dtype: uint8 masks are held in memory and widened in the loss),
``ignore_index`` marking pixels that are neither scored nor trained on.

The metric accumulates a ``C x C`` confusion matrix with torchmetrics (ignored pixels left
out) and derives everything from it, in percent like top-1:

- ``miou``: the mean IoU over the classes *present*, those with a non-empty union
  (``TP + FP + FN > 0``) in the evaluated split, as mmsegmentation's nan-mean does; a class
  that neither occurs nor is predicted does not count as 0 or as 100;
- ``iou_K``: each class's IoU (left out when its union is empty);
- ``pixel_acc``: correct pixels over scored pixels.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from kdcore.errors import UserError


class ConfusionIoU:
    """mIoU, per-class IoU and pixel accuracy over batches (torchmetrics' confusion matrix)."""

    def __init__(self, num_classes: int, ignore_index: int) -> None:
        from torchmetrics.classification import MulticlassConfusionMatrix

        self.matrix = MulticlassConfusionMatrix(num_classes, ignore_index=ignore_index,
                                                validate_args=False)

    def update(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        self.matrix = self.matrix.to(outputs.device)
        self.matrix.update(outputs.argmax(1), targets.long())

    def compute(self) -> dict[str, float]:
        """``miou``, ``pixel_acc`` and ``iou_K`` (percent) from ``matrix[target, prediction]``."""
        matrix = self.matrix.compute().double().cpu()
        tp = matrix.diagonal()
        union = matrix.sum(0) + matrix.sum(1) - tp
        present = union > 0
        iou = tp / union.clamp_min(1)
        total = matrix.sum()
        scores = {"miou": 100.0 * float(iou[present].mean()) if bool(present.any()) else 0.0,
                  "pixel_acc": 100.0 * float(tp.sum() / total) if total > 0 else 0.0}
        scores.update({f"iou_{k}": 100.0 * float(iou[k]) for k in range(len(tp)) if bool(present[k])})
        return scores


class SegmentationTask:
    """Per-pixel cross-entropy over ``num_classes`` (``ignore_index`` left out) and mIoU."""

    primary_metric = "miou"
    target_kind = "mask"

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over the scored pixels (a batch with none gives 0, not NaN)."""
        targets = targets.long()
        total = F.cross_entropy(outputs, targets, ignore_index=self.ignore_index, reduction="sum")
        return total / (targets != self.ignore_index).sum().clamp_min(1)

    def new_metric(self) -> ConfusionIoU:
        return ConfusionIoU(self.num_classes, self.ignore_index)

    def check_output(self, output: Any, inputs: torch.Tensor, where: str) -> None:
        """Refuse, in one line, a model whose output is not one score map per class at the
        input's resolution (a classifier on a segmentation data set)."""
        shape = tuple(getattr(output, "shape", ()))
        want = (self.num_classes, *inputs.shape[2:])
        if len(shape) != 4 or shape[1] < self.num_classes or shape[2:] != want[1:]:
            got = "x".join(str(d) for d in shape[1:]) if shape else type(output).__name__
            raise UserError(f"{where}: this is a segmentation data set, which needs a model that "
                            f"outputs per-pixel class scores {'x'.join(map(str, want))} per image, "
                            f"but it outputs {got}; pick a segmentation model (kdcore list model: "
                            f"seg_teacher, seg_student, seg_net, torchvision_seg)")
