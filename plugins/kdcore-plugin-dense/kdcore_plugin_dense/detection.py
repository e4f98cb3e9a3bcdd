"""Object detection: a YOLO-style grid detector's own loss, decoding with NMS, and COCO mAP.

Targets are boxes ``(N, M, 5)``, float rows ``x1, y1, x2, y2, class`` in pixels (``x2``, ``y2``
exclusive), valid rows first, ``-1`` rows as padding. A scene whose boxes are hidden by
``data.labelled`` has every row :data:`UNLABELLED` (``-2``): the task loss leaves it out, the
teachers still see it (a scene with no objects is different: all rows ``-1``, a labelled scene
whose every cell is background).

Outputs are the detector's raw head output ``(N, A, 5 + C, H, W)``: per anchor ``a`` and grid
cell ``(y, x)`` the channels ``tx, ty, tw, th, to`` then ``C`` class logits, decoded as in
YOLOv2 (Redmon & Farhadi 2017) with the cell size ``s = image / H``:

    cx = (sigmoid(tx) + x) * s,  cy = (sigmoid(ty) + y) * s,  w = pw * exp(tw),  h = ph * exp(th)
    objectness = sigmoid(to),    class probabilities = softmax(class logits)

``(pw, ph)`` are the task's anchors (``data.anchors``), the same for every model that is scored
or distilled on this data; a model's head only has to output as many anchors.

The loss (summed over predictions, divided by the number of labelled scenes in the batch):

- assignment: each box goes to the cell holding its centre and the anchor whose shape has the
  highest IoU with it (YOLOv2);
- box: squared error of ``sigmoid(tx), sigmoid(ty), tw, th`` against the assigned box's
  offsets in its cell and ``log(w / pw), log(h / ph)``, weighted by ``2 - w h / image area``
  (small boxes count more, YOLOv3);
- objectness: binary cross-entropy against 1 at assigned predictions and 0 elsewhere, except
  unassigned predictions whose decoded box already overlaps a box by more than ``ignore_iou``
  (left out, YOLOv2/v3);
- class: cross-entropy at the assigned predictions.

The metric is torchmetrics' ``MeanAveragePrecision`` (COCO protocol, pycocotools backend) on
the detections after :meth:`DetectionTask.detect` (per-prediction score ``objectness x best
class probability``, ``torchvision.ops.batched_nms`` per image and class), in percent: ``map``
(mAP@[.5:.95]), ``map50`` (the headline), ``map75``, ``mar100``.
"""

from __future__ import annotations

from typing import Any

import attrs
import torch
import torch.nn.functional as F
from torchvision.ops import batched_nms, box_convert, box_iou

from kdcore.errors import UserError

#: class value of every row of a scene whose boxes are hidden (``data.labelled``)
UNLABELLED = -2.0
#: the default anchors (w, h in pixels) for 64x64 ``fashion_scenes``: k-means with 1 - IoU on
#: the boxes of the default training scenes (mean best IoU 0.68).
SCENE_ANCHORS = ((19.0, 10.0), (12.0, 19.0), (23.0, 28.0))
BOX, OBJ = 4, 4  # channels 0..3 are the box, channel 4 the objectness, 5.. the classes


@attrs.frozen
class Detections:
    """Detections of a batch, padded: ``boxes (N, K, 4)`` xyxy pixels, ``scores (N, K)``,
    ``labels (N, K)`` (``-1`` and score 0 for padding), ``counts (N,)`` valid per image."""

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor
    counts: torch.Tensor


def head_layout(shape: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in shape)


class DetectionTask:
    """The YOLO-style detection loss, decoding + NMS, and COCO mAP (module docstring)."""

    primary_metric = "map50"
    target_kind = "boxes"
    unlabelled_target = UNLABELLED

    def __init__(self, num_classes: int, image_size: tuple[int, int],
                 anchors: Any = SCENE_ANCHORS, ignore_iou: float = 0.6,
                 score_threshold: float = 0.01, nms_iou: float = 0.5,
                 max_detections: int = 100, class_names: tuple[str, ...] | None = None) -> None:
        self.num_classes = int(num_classes)
        #: for pictures (``kdcore draw``); class indices when absent
        self.class_names = tuple(class_names) if class_names else tuple(str(i) for i in range(num_classes))
        self.image_size = (int(image_size[0]), int(image_size[1]))  # (height, width)
        anchors = torch.as_tensor(anchors, dtype=torch.float32)
        if anchors.dim() != 2 or anchors.shape[1] != 2 or len(anchors) == 0 or bool((anchors <= 0).any()):
            raise UserError(f"config key data.anchors: expected a list of [width, height] pairs in "
                            f"pixels, all > 0, got {anchors.tolist()}", key_path="data.anchors")
        self.anchors = anchors
        self.ignore_iou, self.score_threshold = float(ignore_iou), float(score_threshold)
        self.nms_iou, self.max_detections = float(nms_iou), int(max_detections)

    # --- checks -------------------------------------------------------------------------

    def check_output(self, output: Any, inputs: torch.Tensor | None = None, where: str = "model") -> None:
        """Refuse, in one line, an output that is not this task's raw head output
        ``(N, A, 5 + C, H, W)``: a classifier or segmenter, or a head whose anchors do not
        match ``data.anchors``."""
        shape = tuple(getattr(output, "shape", ()))
        a, c = len(self.anchors), 5 + self.num_classes
        if len(shape) == 5 and shape[2] == c and shape[1] == a:
            return
        got = head_layout(shape[1:]) if shape else type(output).__name__
        if len(shape) == 5 and shape[2] == c:
            raise UserError(f"{where}: its head predicts {shape[1]} anchors per cell but data.anchors "
                            f"lists {a}; give the model num_anchors: {a} or list {shape[1]} anchors "
                            f"in data.anchors")
        if len(shape) == 5:
            raise UserError(f"{where}: its head gives {shape[2]} channels per anchor, but this "
                            f"detection data set needs 5 + {self.num_classes} classes = {c} "
                            f"(tx, ty, tw, th, objectness, class logits)")
        if len(shape) == 4 and shape[1] % c == 0:
            raise UserError(f"{where}: outputs {got}: {shape[1] // c} anchors x {c} channels in "
                            f"one dimension; a detector here must output (anchors, 5 + classes, H, "
                            f"W) per image (a view of its head's convolution), with {a} anchors "
                            f"as data.anchors lists")
        raise UserError(f"{where}: this is a detection data set, which needs a detector whose "
                        f"output is the raw head output ({a} anchors, 5 + {self.num_classes} "
                        f"classes, H, W) per image, but it outputs {got}; pick a detector "
                        f"(kdcore list model: yolo_teacher, yolo_student, yolo)")

    def check_targets(self, boxes: torch.Tensor, where: str) -> None:
        """Refuse boxes outside the image, with ``x2 <= x1`` or ``y2 <= y1``, or with a class
        out of range, naming the first bad scene and row. Padding rows are ``-1``."""
        if not torch.is_tensor(boxes) or boxes.dim() != 3 or boxes.shape[-1] != 5:
            shape = head_layout(tuple(getattr(boxes, "shape", ())))
            raise UserError(f"{where}: detection targets must be (scenes, rows, 5) boxes "
                            f"x1, y1, x2, y2, class; got {shape or type(boxes).__name__}")
        h, w = self.image_size
        cls = boxes[..., 4]
        real = cls >= 0
        x1, y1, x2, y2 = boxes[..., 0], boxes[..., 1], boxes[..., 2], boxes[..., 3]
        problems = [
            (real & ((x1 < 0) | (y1 < 0) | (x2 > w) | (y2 > h)), f"lies outside the {w}x{h} image"),
            (real & ((x2 <= x1) | (y2 <= y1)), "has x2 <= x1 or y2 <= y1"),
            (real & ((cls >= self.num_classes) | (cls != cls.floor())),
             f"has a class outside 0..{self.num_classes - 1}"),
            (~real & (cls != -1) & (cls != UNLABELLED), "has a negative class other than -1 (padding)"),
        ]
        for bad, what in problems:
            if bool(bad.any()):
                n, r = (int(i) for i in bad.nonzero()[0])
                row = ", ".join(f"{float(v):g}" for v in boxes[n, r])
                raise UserError(f"{where}: scene {n} box {r} (x1, y1, x2, y2, class = {row}) {what}; "
                                f"fix the data set's boxes (pixels, x2/y2 exclusive, inside the image)")

    # --- decoding -----------------------------------------------------------------------

    def _grid(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float, float]:
        h, w = out.shape[-2:]
        ys = torch.arange(h, device=out.device, dtype=out.dtype)[:, None]
        xs = torch.arange(w, device=out.device, dtype=out.dtype)[None, :]
        return ys, xs, self.image_size[0] / h, self.image_size[1] / w

    def decode_boxes(self, out: torch.Tensor) -> torch.Tensor:
        """Boxes ``(N, A, H, W, 4)`` xyxy in pixels from the raw head output."""
        self.check_output(out, where="detection output")
        ys, xs, sy, sx = self._grid(out)
        anchors = self.anchors.to(out.device, out.dtype)
        cx = (out[:, :, 0].sigmoid() + xs) * sx
        cy = (out[:, :, 1].sigmoid() + ys) * sy
        bw = anchors[None, :, 0, None, None] * out[:, :, 2].clamp(max=6.0).exp()
        bh = anchors[None, :, 1, None, None] * out[:, :, 3].clamp(max=6.0).exp()
        return box_convert(torch.stack([cx, cy, bw, bh], dim=-1), "cxcywh", "xyxy")

    @torch.no_grad()
    def detect(self, out: torch.Tensor) -> Detections:
        """Scored, class-wise NMS-ed detections of a batch, at most ``max_detections`` each."""
        n, k = out.shape[0], self.max_detections
        per_image = out.shape[1] * out.shape[3] * out.shape[4]  # P = A*H*W predictions
        boxes = self.decode_boxes(out).flatten(0, 3)  # (N*P, 4)
        obj = out[:, :, OBJ].sigmoid().flatten()  # (N*P,)
        probs = out[:, :, 5:].softmax(2).permute(0, 1, 3, 4, 2).flatten(0, 3)  # (N*P, C)
        best, labels = probs.max(-1)
        scores = obj * best
        index = (scores > self.score_threshold).nonzero().squeeze(1)
        chosen = batched_nms(boxes[index].float(), scores[index].float(),
                             index // per_image * self.num_classes + labels[index], self.nms_iou)
        index = index[chosen]  # sorted by score, descending
        index = index[torch.sort(index // per_image, stable=True).indices]  # by image, then by score
        image = index // per_image
        counts = torch.bincount(image, minlength=n)
        rank = torch.arange(len(index), device=out.device) - (counts.cumsum(0) - counts)[image]
        top = rank < k
        index, image, rank = index[top], image[top], rank[top]
        padded_boxes = out.new_zeros(n, k, 4)
        padded_scores = out.new_zeros(n, k)
        padded_labels = torch.full((n, k), -1, dtype=torch.long, device=out.device)
        padded_boxes[image, rank] = boxes[index]
        padded_scores[image, rank] = scores[index]
        padded_labels[image, rank] = labels[index]
        return Detections(padded_boxes, padded_scores, padded_labels, counts.clamp(max=k))

    # --- loss ---------------------------------------------------------------------------

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The detector's loss (module docstring) over the labelled scenes of the batch; a
        batch without any labelled scene gives 0."""
        out = outputs
        self.check_output(out, where="detection loss input")
        n, a, _, gh, gw = out.shape
        targets = targets.to(out.dtype)
        labelled = ~(targets[:, :, 4] == UNLABELLED).any(1)  # (N,)
        valid = targets[:, :, 4] >= 0  # (N, M)
        ys, xs, sy, sx = self._grid(out)
        anchors = self.anchors.to(out.device, out.dtype)

        # assignment: the centre's cell, the anchor of best shape IoU
        gx1, gy1, gx2, gy2 = targets[..., 0], targets[..., 1], targets[..., 2], targets[..., 3]
        w, h = (gx2 - gx1).clamp_min(1e-3), (gy2 - gy1).clamp_min(1e-3)
        cx, cy = (gx1 + gx2) / 2 / sx, (gy1 + gy2) / 2 / sy  # in cells
        col = cx.floor().clamp(0, gw - 1)
        row = cy.floor().clamp(0, gh - 1)
        inter = torch.minimum(w[..., None], anchors[:, 0]) * torch.minimum(h[..., None], anchors[:, 1])
        shape_iou = inter / (w[..., None] * h[..., None] + anchors[:, 0] * anchors[:, 1] - inter)
        best = shape_iou.argmax(-1)  # (N, M)

        bi = torch.arange(n, device=out.device)[:, None].expand_as(valid)[valid]
        ai, ri, ci = best[valid], row[valid].long(), col[valid].long()
        pred = out[bi, ai, :, ri, ci]  # (G, 5 + C) assigned predictions

        # box
        tx, ty = (cx - col)[valid], (cy - row)[valid]
        tw = torch.log(w[valid] / anchors[ai, 0])
        th = torch.log(h[valid] / anchors[ai, 1])
        scale = 2.0 - (w * h)[valid] / (self.image_size[0] * self.image_size[1])
        box = scale * ((pred[:, 0].sigmoid() - tx) ** 2 + (pred[:, 1].sigmoid() - ty) ** 2
                       + (pred[:, 2] - tw) ** 2 + (pred[:, 3] - th) ** 2)
        # class
        cls = F.cross_entropy(pred[:, 5:], targets[..., 4][valid].long(), reduction="sum")

        # objectness: 1 at assigned, 0 elsewhere, unassigned predictions overlapping a box ignored
        with torch.no_grad():
            decoded = self.decode_boxes(out.detach()).flatten(1, 3)  # (N, P, 4)
            iou = torch.vmap(box_iou)(decoded, targets[..., :4])  # (N, P, M), per image
            ignored = ((iou > self.ignore_iou) & valid[:, None, :]).any(-1)  # (N, P)
            weight = (~ignored).to(out.dtype).view(n, a, gh, gw)
            weight = weight * labelled.to(out.dtype)[:, None, None, None]
            target = torch.zeros_like(weight)
            target[bi, ai, ri, ci] = 1.0
            weight[bi, ai, ri, ci] = 1.0
        obj = F.binary_cross_entropy_with_logits(out[:, :, OBJ], target, weight=weight, reduction="sum")
        return (box.sum() + cls + obj) / labelled.sum().clamp_min(1)

    def new_metric(self) -> "DetectionMAP":
        return DetectionMAP(self)


class DetectionMAP:
    """COCO mAP over batches: torchmetrics' ``MeanAveragePrecision`` (pycocotools backend) on
    :meth:`DetectionTask.detect`'s output; results in percent."""

    def __init__(self, task: DetectionTask) -> None:
        from torchmetrics.detection import MeanAveragePrecision

        self.task = task
        self.metric = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend="pycocotools")

    def update(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        found = self.task.detect(outputs)
        preds, truths = [], []
        for i in range(outputs.shape[0]):  # torchmetrics takes one dict per image (evaluation only)
            k = int(found.counts[i])
            preds.append({"boxes": found.boxes[i, :k].float().cpu(), "scores": found.scores[i, :k].float().cpu(),
                          "labels": found.labels[i, :k].cpu()})
            rows = targets[i][targets[i, :, 4] >= 0]
            truths.append({"boxes": rows[:, :4].float().cpu(), "labels": rows[:, 4].long().cpu()})
        self.metric.update(preds, truths)

    def compute(self) -> dict[str, float]:
        import contextlib
        import io

        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its own table
            result = self.metric.compute()
        # -1 means "nothing to score" (no box in the split): no detection can be right, report 0
        pick = {"map": "map", "map50": "map_50", "map75": "map_75", "mar100": "mar_100"}
        return {key: 100.0 * max(float(result[name]), 0.0) for key, name in pick.items()}
