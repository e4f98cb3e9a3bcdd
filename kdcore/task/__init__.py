"""The task: how a data set's targets are scored. Classification is one task among others.

The core never assumes classes: the student's own loss and the evaluation metric come from the
data set's task, so detection or segmentation plug in as data-set plugins. The dense tasks come
with kdcore-plugin-dense (``kdcore_plugin_dense.segmentation``, ``kdcore_plugin_dense.detection``).

What a task declares beside its loss and metric:

- ``primary_metric``: the headline number's key in the metric's ``compute()`` (``top1``,
  ``miou``, ``map50``), used by the summary, the progress line and the method tables.
- ``target_kind``: how targets move when a batch augmentation moves pixels: ``label`` (they do
  not), ``mask`` (``(N, H, W)`` integers, moved like the image, filled with ``ignore_index``)
  or ``boxes`` (``(N, M, 5)`` float rows ``x1, y1, x2, y2, class`` in pixels, class ``-1`` for
  padding). See :mod:`kdcore.data.augment`.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
import torch.nn.functional as F

from ..errors import UserError


class Metric(Protocol):
    def update(self, outputs: Any, targets: Any) -> None: ...
    def compute(self) -> dict[str, float]: ...


class Task(Protocol):
    """What the engine needs to train and score a model on a data set."""

    #: key of the headline number in the metric's ``compute()`` (``top1``, ``miou``, ``map50``).
    primary_metric: str
    #: how targets move with the pixels: ``label``, ``mask`` or ``boxes`` (module docstring).
    target_kind: str

    def loss(self, outputs: Any, targets: Any) -> torch.Tensor: ...
    def new_metric(self) -> Metric: ...
    # optional: ``check_output(output, inputs, where)`` raises a UserError when a model's output
    # cannot be scored by this task (called once on a sample batch before any training)


def headline(task: Any) -> str:
    """The task's headline metric key (``top1`` for a task from before ``primary_metric``)."""
    return getattr(task, "primary_metric", "top1")


class TopK:
    """Top-1 and top-5 accuracy in percent, accumulated over batches."""

    def __init__(self) -> None:
        self.correct1 = 0
        self.correct5 = 0
        self.count = 0

    def update(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        k = min(5, outputs.shape[1])
        top = outputs.topk(k, dim=1).indices
        hits = top.eq(targets.view(-1, 1))
        self.correct1 += int(hits[:, 0].sum())
        self.correct5 += int(hits.any(dim=1).sum())
        self.count += int(targets.numel())

    def compute(self) -> dict[str, float]:
        n = max(self.count, 1)
        return {"top1": 100.0 * self.correct1 / n, "top5": 100.0 * self.correct5 / n}


class ClassificationTask:
    """Cross-entropy (optionally label-smoothed) and top-k accuracy."""

    primary_metric = "top1"
    target_kind = "label"

    def __init__(self, num_classes: int, label_smoothing: float = 0.0, partial_labels: bool = False) -> None:
        self.num_classes = num_classes
        self.label_smoothing = label_smoothing
        # set by ``data.labelled``: a batch may then hold no label at all
        self.partial_labels = partial_labels

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over the labelled samples (target -1 = unlabelled). With
        ``partial_labels`` a batch without labels gives 0 rather than 0/0, computed without a
        host sync (no ``.any()`` on a GPU tensor); otherwise it is the plain mean (that guard
        costs four small kernels a step, which a launch-bound GPU step notices)."""
        if not self.partial_labels:
            return F.cross_entropy(outputs, targets, ignore_index=-1, label_smoothing=self.label_smoothing)
        total = F.cross_entropy(outputs, targets, ignore_index=-1, reduction="sum",
                                label_smoothing=self.label_smoothing)
        return total / (targets >= 0).sum().clamp_min(1)

    def new_metric(self) -> TopK:
        return TopK()

    def check_output(self, output: Any, inputs: torch.Tensor, where: str) -> None:
        """Refuse, in one line, a model whose output is not one score per class (a
        segmentation model on a classification data set)."""
        if not torch.is_tensor(output):  # a model of another kind of algorithm (tuples of exits)
            return
        shape = tuple(output.shape)
        if len(shape) != 2 or (self.num_classes and shape[1] < self.num_classes):
            got = "x".join(str(d) for d in shape[1:])
            raise UserError(f"{where}: this is a classification data set, which needs a model that "
                            f"outputs (at least) {self.num_classes} class scores per image, but it outputs "
                            f"{got}; pick a classifier (kdcore list model)")
