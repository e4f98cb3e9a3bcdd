"""``fashion_scenes``: real Fashion-MNIST items composed into scenes, for dense prediction.

No segmentation or detection data set can be downloaded here, so scenes are built from real
images: each canvas holds 1 to 4 items of one Fashion-MNIST split (train items for train scenes,
test items for test scenes), each resized to a random square size and placed at a random
position, later items occluding earlier ones, on a background of mild noise. The targets come
from the pixels themselves:

- the mask: class ``1 + label`` where the item's own resampled pixel is above ``threshold``,
  ``0`` for background, and :data:`IGNORE_INDEX` on an item's faint anti-aliased rim (pixels
  above ``threshold / 4`` but not above ``threshold``), which is neither item nor background;
- the boxes: for each item, the extent ``[x1, x2) x [y1, y2)`` (pixels) of the mask pixels it
  still owns after occlusion; an item with fewer than ``min_visible`` visible pixels gets no box.

Generation is vectorised (one ``grid_sample`` per item slot over the whole split) and
deterministic in (split, seed, canvas, counts, ...): the same parameters give the same tensors,
and the data set's fingerprint names them, so teacher caches stay valid.
"""

from __future__ import annotations

import hashlib

import attrs
import torch
import torch.nn.functional as F

from kdcore.data import DataSource, TensorSplit
from kdcore.data.fashion_mnist import FASHION_MNIST_ROOT, FILES, find_file
from kdcore.data.idx import read_idx
from kdcore.errors import UserError

IGNORE_INDEX = 255
NUM_ITEM_CLASSES = 10  # Fashion-MNIST's classes; the mask adds background as class 0
ITEM_NAMES = ("T-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker",
              "bag", "boot")
#: mean and std of the default scenes' pixels in [0, 1] units (train split, seed 0), used to
#: normalise every configuration alike so a teacher sees the same scale whatever the options.
SCENES_STATS = (0.118, 0.239)
_HINT = ("install it with 'sudo apt-get install dataset-fashion-mnist' (Debian/Ubuntu), or set "
         "data.root to a folder holding the four *-ubyte.gz files")


@attrs.frozen
class Scenes:
    """One generated split: images in [0, 1] and the targets read off their pixels.

    ``masks`` is ``(N, H, W)`` uint8; ``boxes`` is ``(N, M, 5)`` float32 rows
    ``x1, y1, x2, y2, class`` (class 0..9, ``-1`` for padding), ``M`` the most items a scene holds;
    ``owner`` is ``(N, H, W)`` int8, the slot whose pixel is on top (-1 for background)."""

    images: torch.Tensor
    masks: torch.Tensor
    boxes: torch.Tensor
    owner: torch.Tensor


def _check(canvas: int, items: tuple[int, int], scale: tuple[int, int], counts: dict[str, int],
           threshold: float) -> None:
    if not 16 <= canvas <= 512:
        raise UserError(f"config key data.canvas: {canvas} is outside [16, 512] pixels",
                        key_path="data.canvas")
    lo, hi = items
    if not 0 <= lo <= hi <= 16:
        raise UserError(f"config key data.items: [{lo}, {hi}] must satisfy 0 <= min <= max <= 16",
                        key_path="data.items")
    smin, smax = scale
    if not 4 <= smin <= smax <= canvas:
        raise UserError(f"config key data.scale: [{smin}, {smax}] must satisfy 4 <= min <= max <= "
                        f"canvas ({canvas})", key_path="data.scale")
    for key, n in counts.items():
        if not 1 <= n <= 200_000:
            raise UserError(f"config key data.{key}: {n} is outside [1, 200000] scenes",
                            key_path=f"data.{key}")
    if not 0.0 < threshold < 1.0:
        raise UserError(f"config key data.threshold: {threshold} must lie in (0, 1)",
                        key_path="data.threshold")


def compose(images: torch.Tensor, labels: torch.Tensor, count: int, *, seed: int, canvas: int = 64,
            items: tuple[int, int] = (1, 4), scale: tuple[int, int] = (14, 36),
            threshold: float = 0.25, noise: float = 0.05, min_visible: int = 12) -> Scenes:
    """Compose ``count`` scenes from ``images`` (``(K, 28, 28)`` uint8) and their ``labels``."""
    g = torch.Generator().manual_seed(seed)
    lo, hi = items
    slots = max(hi, 1)
    n_items = torch.randint(lo, hi + 1, (count,), generator=g)
    picks = torch.randint(0, images.shape[0], (count, slots), generator=g)
    sizes = torch.randint(scale[0], scale[1] + 1, (count, slots), generator=g).float()
    x0 = (torch.rand(count, slots, generator=g) * (canvas - sizes + 1)).floor()
    y0 = (torch.rand(count, slots, generator=g) * (canvas - sizes + 1)).floor()
    background = (torch.randn(count, canvas, canvas, generator=g) * noise).clamp_(0.0, 1.0)

    scene = background
    masks = torch.zeros(count, canvas, canvas, dtype=torch.uint8)
    owner = torch.full((count, canvas, canvas), -1, dtype=torch.int8)
    pixel = torch.arange(canvas, dtype=torch.float32) + 0.5  # pixel centres
    for k in range(slots):
        active = k < n_items  # (N,)
        item = images[picks[:, k]].float().div_(255.0).unsqueeze(1)  # (N, 1, 28, 28)
        # canvas pixel centre -> the item's normalised coordinate in [-1, 1] (align_corners=False)
        gx = ((pixel[None, :] - x0[:, k, None]) / sizes[:, k, None]) * 2 - 1  # (N, W)
        gy = ((pixel[None, :] - y0[:, k, None]) / sizes[:, k, None]) * 2 - 1  # (N, H)
        grid = torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), dim=-1)
        value = F.grid_sample(item, grid, mode="bilinear", padding_mode="zeros",
                              align_corners=False)[:, 0]  # (N, H, W)
        value = torch.where(active[:, None, None], value, torch.zeros(()))
        on = value > threshold
        rim = (value > threshold / 4) & ~on
        scene = torch.where(on | rim, value, scene)
        cls = (labels[picks[:, k]] + 1).to(torch.uint8)[:, None, None]
        masks = torch.where(on, cls, torch.where(rim, torch.tensor(IGNORE_INDEX, dtype=torch.uint8), masks))
        owner = torch.where(on, torch.tensor(k, dtype=torch.int8), torch.where(rim, torch.tensor(-1, dtype=torch.int8), owner))

    boxes = torch.full((count, slots, 5), -1.0)
    cols = torch.arange(canvas)
    for k in range(slots):
        mine = owner == k
        visible = mine.flatten(1).sum(1) >= min_visible
        xs, ys = mine.any(1), mine.any(2)  # (N, W), (N, H)
        big = canvas + 1
        x1 = torch.where(xs, cols, big).min(1).values
        x2 = torch.where(xs, cols, -1).max(1).values + 1
        y1 = torch.where(ys, cols, big).min(1).values
        y2 = torch.where(ys, cols, -1).max(1).values + 1
        row = torch.stack([x1, y1, x2, y2, labels[picks[:, k]]], 1).float()
        boxes[:, k] = torch.where(visible[:, None], row, boxes[:, k])
    # visible boxes first, padding last, so a scene's boxes are rows 0..count-1
    order = (boxes[:, :, 4] < 0).to(torch.int8).argsort(dim=1, stable=True)
    boxes = boxes.gather(1, order[:, :, None].expand(-1, -1, 5)).contiguous()
    return Scenes(scene.unsqueeze(1).contiguous(), masks, boxes, owner)


def _split_seed(seed: int, split: str) -> int:
    return seed * 1_000_003 + (1 if split == "train" else 2)


def fashion_scenes(root: str = FASHION_MNIST_ROOT, task: str = "segmentation", canvas: int = 64,
                   items: tuple[int, int] = (1, 4), scale: tuple[int, int] = (14, 36),
                   train_scenes: int = 6000, test_scenes: int = 1000, seed: int = 0,
                   threshold: float = 0.25, noise: float = 0.05, min_visible: int = 12,
                   anchors: list[list[float]] | None = None) -> DataSource:
    """Scenes of Fashion-MNIST items for ``task: segmentation`` (masks) or ``detection`` (boxes).

    Both tasks see the same images for the same parameters; ``seed`` picks the scenes (it is the
    data's seed, not the run's). Images are normalised with :data:`SCENES_STATS`. ``anchors``
    (detection only): the detector's anchor boxes ``[[w, h], ...]`` in pixels (default
    :data:`kdcore_plugin_dense.detection.SCENE_ANCHORS`); a detector's head has one prediction per anchor."""
    if task not in ("segmentation", "detection"):
        raise UserError(f"config key data.task: unknown task {task!r}; choose segmentation or detection",
                        key_path="data.task")
    if anchors is not None and task != "detection":
        raise UserError("config key data.anchors: anchors are for task: detection; remove them",
                        key_path="data.anchors")
    items, scale = (int(items[0]), int(items[1])), (int(scale[0]), int(scale[1]))
    counts = {"train_scenes": int(train_scenes), "test_scenes": int(test_scenes)}
    _check(canvas, items, scale, counts, threshold)
    options = dict(canvas=canvas, items=items, scale=scale, threshold=threshold, noise=noise,
                   min_visible=min_visible)
    mean, std = SCENES_STATS
    splits = {}
    for split, count in (("train", counts["train_scenes"]), ("test", counts["test_scenes"])):
        images = read_idx(find_file(root, FILES[split][0], _HINT))
        labels = read_idx(find_file(root, FILES[split][1], _HINT)).long()
        scenes = compose(images, labels, count, seed=_split_seed(seed, split), **options)
        inputs = scenes.images.sub_(mean).div_(std)
        targets = scenes.masks if task == "segmentation" else scenes.boxes
        splits[split] = TensorSplit(inputs, targets)
    digest = hashlib.sha1(repr(("fashion_scenes", task, seed, counts, sorted(options.items()))).encode())
    if task == "segmentation":
        from .segmentation import SegmentationTask
        task_obj = SegmentationTask(num_classes=NUM_ITEM_CLASSES + 1, ignore_index=IGNORE_INDEX)
        num_classes = NUM_ITEM_CLASSES + 1
    else:
        from .detection import SCENE_ANCHORS, DetectionTask
        scale_to = canvas / 64  # the default anchors are for 64x64 canvases
        default = [[w * scale_to, h * scale_to] for w, h in SCENE_ANCHORS]
        task_obj = DetectionTask(num_classes=NUM_ITEM_CLASSES, image_size=(canvas, canvas),
                                 anchors=default if anchors is None else anchors,
                                 class_names=ITEM_NAMES)
        num_classes = NUM_ITEM_CLASSES
    return DataSource(train=splits["train"], test=splits["test"], task=task_obj,
                      input_shape=(1, canvas, canvas), num_classes=num_classes,
                      fingerprint=digest.hexdigest()[:16], name=f"fashion_scenes/{task}")
