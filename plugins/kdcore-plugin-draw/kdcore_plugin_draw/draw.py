"""``kdcore draw``: a picture of test images with the ground truth and each model's predictions.

Users of dense models look at predictions before numbers. Given one or more run directories of
the same data set, the picture has one row per test image and the columns: (for masks, the input
image,) the ground truth, the teacher of the first run that has one, then each run's student
(named by its run directory). What is drawn follows the task's ``target_kind``:

- ``boxes``: boxes with class and score (``task.detect``: decoded, NMS-ed, score >= ``--min-score``);
- ``mask``: the per-pixel class (argmax of the logits) in a fixed colour per class, ignored
  pixels of the ground truth in black.

Models are rebuilt from each run's ``config.yaml`` and loaded from its ``student.pt`` and the
teacher checkpoint its ``summary.json`` names; the images are the first ``--count`` of the test
split (the same for every column).
"""

from __future__ import annotations

import os
import re
from typing import Any

import torch

from kdcore.errors import UserError

#: a colour per class (tab20 order); class 0 of a segmentation mask (background) is black
_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
            "#7f7f7f", "#bcbd22", "#17becf", "#aec7e8", "#ffbb78"]


def _finished(run_dir: str) -> None:
    if not os.path.isfile(os.path.join(run_dir, "summary.json")):
        raise UserError(f"{run_dir}: no summary.json; kdcore draw needs a finished run directory "
                        f"(kdcore run writes summary.json and student.pt at the end)")


def _models(run_dirs: list[str]) -> tuple[Any, list[tuple[str, torch.nn.Module]]]:
    """The first run's test split and the models to draw: (column title, model), the first
    teacher found (its checkpoint as summary.json names it) before the students."""
    from kdcore.finished_run import load_run_student, load_run_teacher

    columns: list[tuple[str, torch.nn.Module]] = []
    splits = None
    teacher_shown = False
    for run_dir in run_dirs:
        _finished(run_dir)
        config, splits, student = load_run_student(run_dir, splits)
        if not teacher_shown:
            _, _, teacher = load_run_teacher(run_dir, splits, config)
            if teacher is not None:
                columns.insert(0, (f"teacher ({config.teachers[0].type})", teacher))
                teacher_shown = True
        name = re.sub(r"-\d{8}-\d{6}(-\d+)?$", "", os.path.basename(os.path.normpath(run_dir)))
        columns.append((f"student: {name}", student))
    return splits, columns


def _show_boxes(ax: Any, boxes: torch.Tensor, labels: torch.Tensor, scores: torch.Tensor | None,
                names: tuple[str, ...]) -> None:
    import matplotlib.patches as patches

    for j in range(len(boxes)):
        x1, y1, x2, y2 = (float(v) for v in boxes[j])
        colour = _COLOURS[int(labels[j]) % len(_COLOURS)]
        # pixel i covers [i - 0.5, i + 0.5] in imshow's coordinates; boxes are pixel edges
        ax.add_patch(patches.Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False,
                                       edgecolor=colour, linewidth=1.2))
        name = names[int(labels[j])] if int(labels[j]) < len(names) else str(int(labels[j]))
        text = name + (f" {float(scores[j]):.2f}" if scores is not None else "")
        ax.text(x1 - 0.5, y1 - 1.0, text, color=colour, fontsize=5, va="bottom")


def draw(run_dirs: list[str], out: str, count: int = 6, min_score: float = 0.3) -> str:
    """Write the picture (module docstring) to ``out``; returns ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    from kdcore.finished_run import first_test_samples

    splits, columns = _models(run_dirs)
    task = splits.source.task
    kind = getattr(task, "target_kind", "label")
    if kind not in ("boxes", "mask"):
        raise UserError(f"kdcore draw: {run_dirs[0]} is a {kind} task; draw shows masks and boxes "
                        f"(segmentation and detection data sets)")
    inputs, targets = first_test_samples(splits.test, count)
    shown = inputs[:, 0]
    with torch.no_grad():
        outputs = [model.eval()(inputs) for _, model in columns]
    # masks cover the image, so a segmentation picture shows the input in a column of its own
    lead = ["input"] if kind == "mask" else []
    titles = lead + ["ground truth"] + [title for title, _ in columns]
    fig, axes = plt.subplots(len(inputs), len(titles), figsize=(1.9 * len(titles), 1.9 * len(inputs)),
                             squeeze=False)
    cmap = ListedColormap(["#000000", *_COLOURS])
    names = tuple(getattr(task, "class_names", ()))
    for r in range(len(inputs)):
        for c, title in enumerate(titles):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=6)
            if kind == "boxes":
                ax.imshow(shown[r].numpy(), cmap="gray")
                if c == 0:
                    rows = targets[r][targets[r, :, 4] >= 0]
                    _show_boxes(ax, rows[:, :4], rows[:, 4].long(), None, names)
                else:
                    found = task.detect(outputs[c - 1][r:r + 1])
                    keep = found.scores[0] >= min_score
                    _show_boxes(ax, found.boxes[0][keep], found.labels[0][keep], found.scores[0][keep], names)
            elif c < len(lead):
                ax.imshow(shown[r].numpy(), cmap="gray")
            else:
                k = c - len(lead)
                mask = targets[r].long() if k == 0 else outputs[k - 1][r].argmax(0)
                mask = torch.where(mask == getattr(task, "ignore_index", 255), 0, mask)
                ax.imshow(mask.numpy(), cmap=cmap, vmin=0, vmax=len(_COLOURS), interpolation="nearest")
    what = f"boxes: class and score >= {min_score}" if kind == "boxes" else "per-pixel class"
    fig.suptitle(f"{splits.source.name} test images ({what})", fontsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=150)
    plt.close(fig)
    return out
