"""File-based data sets, read from tiny fake files written in the real on-disk formats."""

from __future__ import annotations

import os
import pickle
import re
import shutil
import struct

import numpy as np
import pytest
import torch
from PIL import Image

import kdcore
from kdcore.data import TensorSplit

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
PER_BATCH = 3


def _pickle(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def _fake_cifar10(root, seed=0):
    """ROOT/cifar-10-batches-py with 5 training batches and a test batch of PER_BATCH images."""
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(folder)
    batches = {}
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        data = rng.integers(0, 256, size=(PER_BATCH, 3072), dtype=np.uint8)
        labels = [(i + j) % 10 for j in range(PER_BATCH)]
        files = [f"{name}_{j}.png" for j in range(PER_BATCH)]
        _pickle(os.path.join(folder, name),
                {"batch_label": name, "labels": labels, "data": data, "filenames": files})
        batches[name] = (data, labels)
    _pickle(os.path.join(folder, "batches.meta"),
            {"label_names": [f"class{k}" for k in range(10)], "num_cases_per_batch": PER_BATCH,
             "num_vis": 3072})
    return batches


def _fake_cifar100(root):
    rng = np.random.default_rng(1)
    folder = os.path.join(root, "cifar-100-python")
    os.makedirs(folder)
    for name, n in (("train", 4), ("test", 2)):
        _pickle(os.path.join(folder, name),
                {"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
                 "fine_labels": [99 - j for j in range(n)], "coarse_labels": [0] * n,
                 "filenames": [f"{j}.png" for j in range(n)], "batch_label": name})
    _pickle(os.path.join(folder, "meta"), {"fine_label_names": [f"c{k}" for k in range(100)],
                                           "coarse_label_names": [f"s{k}" for k in range(20)]})


def _by_hand(data_row: np.ndarray, c: int, y: int, x: int, mean=CIFAR10_MEAN, std=CIFAR10_STD):
    """Pixel (c, y, x) of a CIFAR row (channel planes of 32 rows of 32), normalised."""
    return (float(data_row[c * 1024 + y * 32 + x]) / 255.0 - mean[c]) / std[c]


def test_cifar10_in_memory(tmp_path):
    batches = _fake_cifar10(tmp_path)
    source = kdcore.build("dataset", "cifar10", root=str(tmp_path))
    assert isinstance(source.train, TensorSplit) and isinstance(source.test, TensorSplit)
    assert source.train.inputs.shape == (5 * PER_BATCH, 3, 32, 32)
    assert source.train.inputs.dtype == torch.float32
    assert len(source.test) == PER_BATCH
    assert source.input_shape == (3, 32, 32) and source.num_classes == 10
    assert source.task.num_classes == 10 and source.name == "cifar10"
    expected_labels = []
    for k in range(1, 6):
        expected_labels += batches[f"data_batch_{k}"][1]
    assert source.train.targets.tolist() == expected_labels
    assert source.test.targets.tolist() == batches["test_batch"][1]
    # The 2nd image of data_batch_3 is training sample 2 * PER_BATCH + 1.
    row = batches["data_batch_3"][0][1]
    for c, y, x in ((0, 0, 0), (1, 5, 17), (2, 31, 30)):
        got = float(source.train.inputs[2 * PER_BATCH + 1, c, y, x])
        assert got == pytest.approx(_by_hand(row, c, y, x), abs=1e-5)


def test_cifar10_per_sample_matches_in_memory(tmp_path):
    _fake_cifar10(tmp_path)
    memory = kdcore.build("dataset", "cifar10", root=str(tmp_path))
    lazy = kdcore.build("dataset", "cifar10", root=str(tmp_path), in_memory=False)
    assert isinstance(lazy.train, torch.utils.data.Dataset) and len(lazy.train) == 5 * PER_BATCH
    image, label = lazy.train[4]
    assert isinstance(label, int) and label == int(memory.train.targets[4])
    torch.testing.assert_close(image, memory.train.inputs[4])
    image, label = lazy.test[2]
    torch.testing.assert_close(image, memory.test.inputs[2])
    assert lazy.fingerprint == memory.fingerprint  # same data, same preprocessing


def test_cifar10_augment_is_a_padded_crop_or_its_flip(tmp_path):
    batches = _fake_cifar10(tmp_path)
    source = kdcore.build("dataset", "cifar10", root=str(tmp_path), in_memory=False, sample_augment=True)
    row = batches["data_batch_1"][0][0]
    plain = np.stack([np.array([[_by_hand(row, c, y, x) for x in range(32)] for y in range(32)])
                      for c in range(3)])
    zero = np.array([(0.0 - CIFAR10_MEAN[c]) / CIFAR10_STD[c] for c in range(3)])
    padded = np.broadcast_to(zero[:, None, None], (3, 40, 40)).copy()
    padded[:, 4:36, 4:36] = plain
    candidates = [padded[:, i:i + 32, j:j + 32] for i in range(9) for j in range(9)]
    candidates += [c[:, :, ::-1] for c in candidates]
    torch.manual_seed(0)
    seen_changed = False
    for _ in range(6):
        image, _ = source.train[0]
        got = image.numpy()
        assert any(np.allclose(got, c, atol=1e-5) for c in candidates)
        seen_changed |= not np.allclose(got, plain, atol=1e-5)
    assert seen_changed
    test_image, _ = source.test[0]  # never augmented
    assert test_image.shape == (3, 32, 32)


def test_cifar10_augment_in_memory_is_refused(tmp_path):
    _fake_cifar10(tmp_path)
    with pytest.raises(kdcore.UserError, match="in_memory: false"):
        kdcore.build("dataset", "cifar10", root=str(tmp_path), sample_augment=True)


def test_cifar10_fingerprint_follows_root_and_transform(tmp_path):
    _fake_cifar10(tmp_path / "a", seed=0)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    first = kdcore.build("dataset", "cifar10", root=str(tmp_path / "a")).fingerprint
    again = kdcore.build("dataset", "cifar10", root=str(tmp_path / "a")).fingerprint
    other_root = kdcore.build("dataset", "cifar10", root=str(tmp_path / "b")).fingerprint
    augmented = kdcore.build("dataset", "cifar10", root=str(tmp_path / "a"), in_memory=False,
                             sample_augment=True).fingerprint
    assert first == again
    assert len({first, other_root, augmented}) == 3


def test_cifar10_root_may_be_the_extracted_folder(tmp_path):
    _fake_cifar10(tmp_path)
    source = kdcore.build("dataset", "cifar10", root=str(tmp_path / "cifar-10-batches-py"))
    assert len(source.train) == 5 * PER_BATCH


def test_cifar100(tmp_path):
    _fake_cifar100(tmp_path)
    source = kdcore.build("dataset", "cifar100", root=str(tmp_path))
    assert source.num_classes == 100 and source.task.num_classes == 100
    assert source.train.targets.tolist() == [99, 98, 97, 96]
    assert len(source.test) == 2


def test_cifar_missing_folder_names_the_path(tmp_path):
    with pytest.raises(kdcore.UserError) as info:
        kdcore.build("dataset", "cifar10", root=str(tmp_path / "nowhere"))
    message = str(info.value)
    assert str(tmp_path / "nowhere" / "cifar-10-batches-py") in message
    assert "cifar-10-python.tar.gz" in message and "never downloads" in message
    with pytest.raises(kdcore.UserError, match="cifar-100-python"):
        kdcore.build("dataset", "cifar100", root=str(tmp_path))


def test_cifar_missing_or_corrupt_batch_names_the_file(tmp_path):
    _fake_cifar10(tmp_path)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(b"not a pickle")
    with pytest.raises(kdcore.UserError, match=re.escape(str(batch))):
        kdcore.build("dataset", "cifar10", root=str(tmp_path))
    batch.unlink()
    with pytest.raises(kdcore.UserError, match=re.escape(f"{batch} is missing")):
        kdcore.build("dataset", "cifar10", root=str(tmp_path))


def test_cifar_wrong_data_set_is_caught_by_meta(tmp_path):
    _fake_cifar10(tmp_path)
    _pickle(tmp_path / "cifar-10-batches-py" / "batches.meta", {"label_names": ["a", "b"]})
    with pytest.raises(kdcore.UserError, match="2 classes"):
        kdcore.build("dataset", "cifar10", root=str(tmp_path))


def _write_idx(path, array: np.ndarray):
    code = 0x08
    with open(path, "wb") as f:
        f.write(bytes([0, 0, code, array.ndim]))
        f.write(struct.pack(f">{array.ndim}I", *array.shape))
        f.write(array.astype(np.uint8).tobytes())


def test_mnist_torchvision_layout(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    _write_idx(raw / "train-images-idx3-ubyte", images)
    _write_idx(raw / "train-labels-idx1-ubyte", np.array([3, 1, 4, 1, 5]))
    _write_idx(raw / "t10k-images-idx3-ubyte", images[:2])
    _write_idx(raw / "t10k-labels-idx1-ubyte", np.array([9, 2]))
    source = kdcore.build("dataset", "mnist_torchvision", root=str(tmp_path))
    assert len(source.train) == 5 and len(source.test) == 2
    assert source.input_shape == (1, 28, 28) and source.num_classes == 10
    image, label = source.train[2]
    assert isinstance(label, int) and label == 4
    assert image.shape == (1, 28, 28)
    assert float(image[0, 7, 11]) == pytest.approx((images[2, 7, 11] / 255.0 - 0.1307) / 0.3081,
                                                   abs=1e-5)
    assert source.test[1][1] == 2


def test_mnist_torchvision_missing_names_the_folder(tmp_path):
    with pytest.raises(kdcore.UserError) as info:
        kdcore.build("dataset", "mnist_torchvision", root=str(tmp_path))
    message = str(info.value)
    assert str(tmp_path / "MNIST" / "raw") in message and "train-images-idx3-ubyte" in message


def _png_tree(root, classes, per_class=2, size=(40, 30)):
    for k, name in enumerate(classes):
        os.makedirs(os.path.join(root, name))
        for j in range(per_class):
            color = (40 * k, 10 * j, 200)
            Image.new("RGB", size, color).save(os.path.join(root, name, f"{j}.png"))


def test_image_folder(tmp_path):
    _png_tree(tmp_path / "train", ["cat", "dog", "eel"], per_class=2)
    _png_tree(tmp_path / "val", ["cat", "dog", "eel"], per_class=1)
    source = kdcore.build("dataset", "image_folder", root=str(tmp_path / "train"),
                          val_root=str(tmp_path / "val"), image_size=16)
    assert len(source.train) == 6 and len(source.test) == 3
    assert source.num_classes == 3 and source.input_shape == (3, 16, 16)
    image, label = source.train[2]  # sorted classes: cat, dog, eel -> third image is dog
    assert image.shape == (3, 16, 16) and isinstance(label, int) and label == 1
    # A flat colour survives resize and crop; check the normalised red channel by hand.
    assert float(image[0, 8, 8]) == pytest.approx((40 / 255.0 - 0.485) / 0.229, abs=1e-5)
    same = kdcore.build("dataset", "image_folder", root=str(tmp_path), image_size=16)
    assert len(same.train) == 6 and len(same.test) == 3  # train/ and val/ under root
    bigger = kdcore.build("dataset", "image_folder", root=str(tmp_path), image_size=20)
    assert bigger.train[0][0].shape == (3, 20, 20)
    assert len({source.fingerprint, bigger.fingerprint}) == 2
    augmented = kdcore.build("dataset", "image_folder", root=str(tmp_path), image_size=16,
                             sample_augment=True)
    assert augmented.train[0][0].shape == (3, 16, 16)
    assert augmented.fingerprint != same.fingerprint


def test_image_folder_errors_name_the_path(tmp_path):
    missing = tmp_path / "missing"
    with pytest.raises(kdcore.UserError, match=re.escape(str(missing))):
        kdcore.build("dataset", "image_folder", root=str(missing), val_root=str(tmp_path))
    with pytest.raises(kdcore.UserError, match="val_root"):
        kdcore.build("dataset", "image_folder", root=str(tmp_path))
    with pytest.raises(kdcore.UserError, match=rf"^data: image_folder: root {re.escape(str(missing))} is not a folder"):
        kdcore.build("dataset", "image_folder", root=str(missing), where="data")  # not "val_root is not set"
    _png_tree(tmp_path / "a", ["cat", "dog"])
    _png_tree(tmp_path / "b", ["cat", "emu"])
    with pytest.raises(kdcore.UserError, match="emu"):
        kdcore.build("dataset", "image_folder", root=str(tmp_path / "a"),
                     val_root=str(tmp_path / "b"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(kdcore.UserError, match=re.escape(str(tmp_path / "empty"))):
        kdcore.build("dataset", "image_folder", root=str(tmp_path / "a"),
                     val_root=str(tmp_path / "empty"))
