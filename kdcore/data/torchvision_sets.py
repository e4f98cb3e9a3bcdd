"""File-based image data sets: CIFAR-10/100, MNIST (torchvision layout) and image folders.

Nothing is ever downloaded: a missing folder or file is a :class:`UserError` naming the path and
saying where to get the data. CIFAR is read from its published python-pickle batches by kdcore
itself (torchvision's reader re-hashes 170 MB on every load and rejects anything but the exact
archive); it is small enough to decode once into a normalised :class:`TensorSplit`
(``in_memory: true``, the default). With ``in_memory: false`` each split is a per-sample torch
``Dataset``, which is also where the ``sample_augment`` option (4-pixel-padded random crop and
horizontal flip, the standard CIFAR recipe) runs. (It is not called ``augment``: that key of
the ``data`` block is the list of whole-batch augmentations, ``data.augment``.)
"""

from __future__ import annotations

import hashlib
import os
import pickle
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..errors import UserError
from ..task import ClassificationTask
from .source import DataSource, TensorSplit

#: Where data sets are looked for when ``root`` is not given. Fixed, not under
#: ``$KDCORE_CACHE_DIR``: the folder's path is part of the data set's fingerprint, which keys
#: the cached teachers, so it must not move with an environment variable.
DEFAULT_ROOT = "~/.cache/kdcore/data"


#: Per-channel mean and std of the training images, in [0, 1] units.
CIFAR10_STATS = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
CIFAR100_STATS = ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761))
MNIST_STATS = ((0.1307,), (0.3081,))
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))

_CIFAR = {
    "cifar10": {
        "folder": "cifar-10-batches-py", "archive": "cifar-10-python.tar.gz", "classes": 10,
        "train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"],
        "meta": ("batches.meta", "label_names"), "labels": "labels", "stats": CIFAR10_STATS,
    },
    "cifar100": {
        "folder": "cifar-100-python", "archive": "cifar-100-python.tar.gz", "classes": 100,
        "train": ["train"], "test": ["test"],
        "meta": ("meta", "fine_label_names"), "labels": "fine_labels", "stats": CIFAR100_STATS,
    },
}


def _digest(*parts: Any) -> str:
    return hashlib.sha1("|".join(str(p) for p in parts).encode()).hexdigest()[:16]


def _normalise(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 ``(..., C, H, W)`` to float, scaled to [0, 1] then standardised per channel."""
    m = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
    return images.float().div_(255.0).sub_(m).div_(s)  # in place: CIFAR-10 train is 0.6 GB


class CifarSplit(Dataset):
    """A CIFAR split kept as uint8 images, normalised (and optionally augmented) per sample."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, stats: tuple,
                 augment: bool) -> None:
        self.images = images
        self.targets = targets
        self.mean, self.std = stats
        self.augment = augment

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.images[index]
        if self.augment:
            h, w = image.shape[-2:]
            padded = F.pad(image, (4, 4, 4, 4))
            top, left = (int(v) for v in torch.randint(0, 9, (2,)))
            image = padded[:, top:top + h, left:left + w]
            if bool(torch.rand(()) < 0.5):
                image = image.flip(-1)
        return _normalise(image, self.mean, self.std), int(self.targets[index])


def _cifar_folder(kind: str, root: str) -> str:
    spec = _CIFAR[kind]
    root = os.path.expanduser(root)
    folder = os.path.join(root, spec["folder"])
    if not os.path.isdir(folder) and os.path.basename(os.path.normpath(root)) == spec["folder"]:
        folder = root  # root already points at the extracted folder
    if not os.path.isdir(folder):
        raise UserError(
            f"{kind}: data folder {folder} is missing; kdcore never downloads data. Download "
            f"{spec['archive']} from https://www.cs.toronto.edu/~kriz/cifar.html and extract it "
            f"in {root} (giving {folder}), or set data.root to the folder that holds "
            f"{spec['folder']}/")
    return folder


def _load_pickle(path: str, kind: str) -> dict[str, Any]:
    if not os.path.isfile(path):
        raise UserError(f"{kind}: data file {path} is missing; re-extract the CIFAR archive "
                        "from https://www.cs.toronto.edu/~kriz/cifar.html there")
    try:
        with open(path, "rb") as f:
            raw = pickle.load(f, encoding="latin1")
    except Exception as exc:  # any unpickling failure means a damaged file
        raise UserError(f"{kind}: data file {path} is corrupted or not a CIFAR python batch "
                        f"({type(exc).__name__}: {exc}); re-extract the archive") from exc
    if not isinstance(raw, dict):
        raise UserError(f"{kind}: data file {path} is not a CIFAR python batch (no dict inside)")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in raw.items()}


def load_cifar_split(kind: str, folder: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode one split into uint8 images ``(N, 3, 32, 32)`` and int64 labels."""
    spec = _CIFAR[kind]
    images, labels = [], []
    for name in spec[split]:
        path = os.path.join(folder, name)
        batch = _load_pickle(path, kind)
        if "data" not in batch or spec["labels"] not in batch:
            raise UserError(f"{kind}: data file {path} lacks 'data' or {spec['labels']!r}: "
                            "not a CIFAR python batch of this data set")
        data = np.asarray(batch["data"], dtype=np.uint8)
        target = np.asarray(batch[spec["labels"]], dtype=np.int64)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.shape[0] != target.shape[0]:
            raise UserError(f"{kind}: data file {path} holds {data.shape} images and "
                            f"{target.shape} labels; expected (N, 3072) and (N,)")
        if target.size and (target.min() < 0 or target.max() >= spec["classes"]):
            raise UserError(f"{kind}: data file {path} has labels outside 0..{spec['classes'] - 1}")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(target)
    return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))


def _check_meta(kind: str, folder: str) -> None:
    """If the meta file is there, make sure it describes this data set (catches a wrong root)."""
    name, key = _CIFAR[kind]["meta"]
    path = os.path.join(folder, name)
    if os.path.isfile(path):
        names = _load_pickle(path, kind).get(key)
        if names is not None and len(names) != _CIFAR[kind]["classes"]:
            raise UserError(f"{kind}: {path} lists {len(names)} classes, expected "
                            f"{_CIFAR[kind]['classes']}: is data.root the right data set?")


def _cifar(kind: str, root: str, augment: bool, in_memory: bool) -> DataSource:
    if augment and in_memory:
        raise UserError(f"data ({kind}): sample_augment: true is the per-sample path's augmentation; in "
                        "memory, use the batch augmentations instead: data.augment: [{type: "
                        "random_crop, padding: 4}, {type: hflip}] (or set in_memory: false)",
                        key_path="data")
    folder = _cifar_folder(kind, root)
    _check_meta(kind, folder)
    stats = _CIFAR[kind]["stats"]
    train_images, train_labels = load_cifar_split(kind, folder, "train")
    test_images, test_labels = load_cifar_split(kind, folder, "test")
    if in_memory:
        train: Any = TensorSplit(_normalise(train_images, *stats), train_labels)
        test: Any = TensorSplit(_normalise(test_images, *stats), test_labels)
    else:
        train = CifarSplit(train_images, train_labels, stats, augment)
        test = CifarSplit(test_images, test_labels, stats, False)
    n = _CIFAR[kind]["classes"]
    fingerprint = _digest(kind, os.path.abspath(folder), len(train_labels), len(test_labels),
                          stats, f"augment={augment}")
    return DataSource(train=train, test=test, task=ClassificationTask(n), input_shape=(3, 32, 32),
                      num_classes=n, fingerprint=fingerprint, name=kind)


def cifar10(root: str = DEFAULT_ROOT, sample_augment: bool = False, in_memory: bool = True) -> DataSource:
    """CIFAR-10 (50k/10k, 32x32 RGB) from ``ROOT/cifar-10-batches-py``, normalised.

    :param sample_augment: random crop (padding 4) and horizontal flip on training samples, one
        at a time; needs ``in_memory: false`` (in memory, ``data.augment`` does it per batch).
    :param in_memory: decode once into float tensors (about 0.6 GB for the training split).
    """
    return _cifar("cifar10", root, sample_augment, in_memory)


def cifar100(root: str = DEFAULT_ROOT, sample_augment: bool = False, in_memory: bool = True) -> DataSource:
    """CIFAR-100 (fine labels) from ``ROOT/cifar-100-python``; options as for :func:`cifar10`."""
    return _cifar("cifar100", root, sample_augment, in_memory)


def mnist_torchvision(root: str = DEFAULT_ROOT) -> DataSource:
    """MNIST from torchvision's folder layout ``ROOT/MNIST/raw/*-ubyte``, one sample at a time."""
    from torchvision import datasets, transforms

    root = os.path.expanduser(root)
    raw = os.path.join(root, "MNIST", "raw")
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize(*MNIST_STATS)])
    try:
        train = datasets.MNIST(root, train=True, transform=transform, download=False)
        test = datasets.MNIST(root, train=False, transform=transform, download=False)
    except RuntimeError as exc:
        missing = [f for f in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                               "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
                   if not os.path.isfile(os.path.join(raw, f))]
        what = (f"data files missing in {raw}: {', '.join(missing)}" if missing
                else f"data files in {raw} are unreadable ({exc})")
        raise UserError(f"mnist_torchvision: {what}; kdcore never downloads data. Put the four "
                        "uncompressed MNIST IDX files there (gunzip the *.gz from the MNIST site), "
                        "or set data.root to the folder that holds MNIST/raw/") from exc
    fingerprint = _digest("mnist_torchvision", os.path.abspath(raw), len(train), len(test),
                          MNIST_STATS)
    return DataSource(train=train, test=test, task=ClassificationTask(10), input_shape=(1, 28, 28),
                      num_classes=10, fingerprint=fingerprint, name="mnist_torchvision")


class UnreadableImage(UserError):
    """An image file that cannot be decoded (truncated, empty, not an image, a broken link)."""

    def __init__(self, message: str, path: str) -> None:
        super().__init__(message)
        self.path = path


def read_image(path: str) -> Any:
    """The image at ``path`` as RGB, decoded now (PIL opens lazily: a truncated file would fail
    later, inside a transform); an unreadable file is one line naming it."""
    from PIL import Image

    try:
        with open(path, "rb") as f:
            image = Image.open(f)
            image.load()
            return image.convert("RGB")
    except Exception as exc:  # PIL: UnidentifiedImageError, truncated data, bad headers, bombs
        reason = str(exc).splitlines()[0] if str(exc).strip() else type(exc).__name__
        if isinstance(exc, FileNotFoundError) and os.path.islink(path):
            reason = f"a broken symbolic link to {os.readlink(path)}"
        elif os.path.isfile(path) and os.path.getsize(path) == 0:
            reason = "an empty file"
        raise UnreadableImage(f"image_folder: {path} cannot be read as an image ({reason}); remove "
                              f"or replace it, or set data.skip_bad_images: true to skip unreadable "
                              f"files (counted in a warning)", path) from None


def _image_folder(path: str, transform: Any, key: str, skip_bad_images: bool = False) -> Any:
    from torchvision import datasets

    if not os.path.isdir(path):
        raise UserError(f"image_folder: {key} {path} is not a folder; it must hold one sub-folder "
                        "of images per class (ROOT/CLASS/IMAGE.png); kdcore never downloads data")
    try:
        folder = datasets.ImageFolder(path, transform=transform, loader=read_image)
    except (FileNotFoundError, RuntimeError) as exc:
        raise UserError(f"image_folder: {key} {path} has no usable images ({exc}); it must hold "
                        "one sub-folder of images per class (ROOT/CLASS/IMAGE.png)") from exc
    if skip_bad_images:  # every file decoded once, now, so training never meets a bad one
        bad = []
        for sample in folder.samples:
            try:
                read_image(sample[0])
            except UnreadableImage as exc:
                bad.append(exc.path)
        if bad:
            unreadable = set(bad)
            folder.samples = [s for s in folder.samples if s[0] not in unreadable]
            folder.imgs, folder.targets = folder.samples, [s[1] for s in folder.samples]
            print(f"warning: image_folder: skipped {len(bad)} unreadable file"
                  f"{'s' if len(bad) != 1 else ''} of {len(bad) + len(folder.samples)} under {path} "
                  f"(data.skip_bad_images), e.g. {bad[0]}", file=sys.stderr)
        if not folder.samples:
            raise UserError(f"image_folder: {key} {path}: none of its images can be read")
    return folder


def image_folder(root: str, val_root: str | None = None, image_size: int = 224,
                 resize_size: int | None = None, sample_augment: bool = False,
                 mean: Sequence[float] = IMAGENET_STATS[0],
                 std: Sequence[float] = IMAGENET_STATS[1],
                 skip_bad_images: bool = False) -> DataSource:
    """Images in class sub-folders (torchvision ``ImageFolder``), decoded per sample.

    :param root: training folder, ``root/CLASS/*.png|jpg``; or, when ``val_root`` is not given, a
        folder holding ``train/`` and ``val/`` in that layout.
    :param val_root: evaluation folder with the same class sub-folders.
    :param image_size: side of the square crop fed to the model.
    :param resize_size: shorter side before the centre crop (default ``image_size``; ImageNet
        practice is 256 for 224).
    :param sample_augment: random-resized crop and horizontal flip for training samples.
    :param skip_bad_images: decode every file once when the data set is opened and leave out
        those that cannot be read, with a warning that counts them; otherwise (the default) a
        bad file stops the run with one line naming it when a batch first needs it.
    """
    from torchvision import transforms

    root = os.path.expanduser(root)
    if not os.path.isdir(root):
        raise UserError(f"image_folder: root {root} is not a folder; it must hold train/ and val/ "
                        "(or set data.val_root), one sub-folder of images per class; kdcore never "
                        "downloads data")
    if val_root is None:
        train_root, val_root = os.path.join(root, "train"), os.path.join(root, "val")
        if not (os.path.isdir(train_root) and os.path.isdir(val_root)):
            raise UserError(f"image_folder: data.val_root is not set and {root} has no train/ and "
                            "val/ sub-folders; set data.val_root to the evaluation folder")
    else:
        train_root, val_root = root, os.path.expanduser(val_root)
    if image_size < 1:
        raise UserError(f"image_folder: image_size must be positive, got {image_size}")
    resize = resize_size or image_size
    normalise = [transforms.ToTensor(), transforms.Normalize(list(mean), list(std))]
    evaluate = transforms.Compose([transforms.Resize(resize), transforms.CenterCrop(image_size),
                                   *normalise])
    if sample_augment:
        training = transforms.Compose([transforms.RandomResizedCrop(image_size),
                                       transforms.RandomHorizontalFlip(), *normalise])
    else:
        training = evaluate
    train = _image_folder(train_root, training, "root", skip_bad_images)
    test = _image_folder(val_root, evaluate, "val_root", skip_bad_images)
    if train.classes != test.classes:
        only_train = sorted(set(train.classes) - set(test.classes))
        only_val = sorted(set(test.classes) - set(train.classes))
        raise UserError(f"image_folder: class folders differ between {train_root} and {val_root} "
                        f"(only in train: {only_train[:5]}, only in val: {only_val[:5]})")
    n = len(train.classes)
    fingerprint = _digest("image_folder", os.path.abspath(train_root), os.path.abspath(val_root),
                          len(train), len(test), n, image_size, resize, f"augment={sample_augment}",
                          tuple(mean), tuple(std))
    return DataSource(train=train, test=test, task=ClassificationTask(n),
                      input_shape=(3, image_size, image_size), num_classes=n,
                      fingerprint=fingerprint, name="image_folder")
