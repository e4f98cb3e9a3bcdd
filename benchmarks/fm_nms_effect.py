"""What FM-NMS removes from a detection teacher's output, on the test scenes of a run.

    python benchmarks/fm_nms_effect.py runs/detection-table/runs/yolo_kd-s0-<stamp>

Reads the run's config and its teacher checkpoint (summary.json), runs the teacher on the test
split and prints: the teacher's objectness mass FM-NMS keeps; how many predictions above
``--min-objectness`` it suppresses, split into duplicates (their same-class ground-truth box at
IoU > 0.5 is also found by a kept prediction), the only detection of a real box, and predictions
matching no same-class box; and how many ground-truth boxes some teacher prediction finds
before and after FM-NMS. Used for the FM-NMS paragraph of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import sys

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir")
    parser.add_argument("--min-objectness", type=float, default=0.3)
    args = parser.parse_args()
    from kdcore.finished_run import load_run_teacher
    from torchvision.ops import box_iou
    from kdcore_plugin_yolo_kd.losses import fm_nms

    torch.set_num_threads(1)
    _, splits, teacher = load_run_teacher(args.run_dir)
    if teacher is None:
        sys.exit(f"{args.run_dir}: no teacher checkpoint (summary.json names none, or it is gone)")
    with torch.no_grad():
        out = teacher.eval()(splits.test.inputs)
    logit, classes = out[:, :, 4], out[:, :, 5:].argmax(2)
    o = logit.sigmoid()
    keep = fm_nms(logit, classes, out.shape[2] - 5, 3)
    strong = o > args.min_objectness
    gt = splits.test.targets
    valid = gt[..., 4] >= 0
    iou = torch.vmap(box_iou)(splits.source.task.decode_boxes(out).flatten(1, 3), gt[..., :4])
    iou = iou * valid[:, None, :]  # padding rows overlap nothing
    iou = iou * (classes.flatten(1)[:, :, None] == gt[..., 4].long()[:, None, :])  # same class only
    best_iou, best_box = iou.max(2)
    found_after = ((iou > 0.5) & (keep & strong).flatten(1)[:, :, None]).any(1)  # (N, M)
    found_before = ((iou > 0.5) & strong.flatten(1)[:, :, None]).any(1)
    suppressed = ((~keep) & strong).flatten(1)
    matched = best_iou > 0.5
    duplicate = suppressed & matched & found_after.gather(1, best_box)
    only = suppressed & matched & ~found_after.gather(1, best_box)
    print(f"test scenes {out.shape[0]}, boxes {int(valid.sum())}, teacher predictions {o.numel()}")
    print(f"objectness mass kept by FM-NMS: {float((o * keep).sum() / o.sum()):.3f}")
    print(f"predictions with objectness > {args.min_objectness}: {int(strong.sum())}, suppressed "
          f"{int(suppressed.sum())}: duplicates of a kept detection {int(duplicate.sum())}, the only "
          f"detection of a real box {int(only.sum())}, matching no same-class box (IoU > 0.5) "
          f"{int((suppressed & ~matched).sum())}")
    print(f"boxes found (same class, IoU > 0.5) by a teacher prediction: {int(found_before[valid].sum())} "
          f"before FM-NMS, {int(found_after[valid].sum())} after")


if __name__ == "__main__":
    main()
