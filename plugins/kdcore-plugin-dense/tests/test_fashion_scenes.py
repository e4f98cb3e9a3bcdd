"""``fashion_scenes``: masks and boxes agree with the pixels; generation is deterministic; batch
augmentations move masks and boxes with the image."""

from __future__ import annotations

import pytest
import torch

from kdcore.data.augment import HorizontalFlip, RandomCrop
from kdcore.data.idx import read_idx
from kdcore.errors import UserError
from kdcore_plugin_dense.datasets import FASHION_MNIST_ROOT, FILES, IGNORE_INDEX, _HINT, compose, find_file


def _items(n: int = 2000) -> tuple[torch.Tensor, torch.Tensor]:
    images = read_idx(find_file(FASHION_MNIST_ROOT, FILES["test"][0], _HINT))[:n]
    labels = read_idx(find_file(FASHION_MNIST_ROOT, FILES["test"][1], _HINT))[:n].long()
    return images, labels


@pytest.fixture(scope="module")
def scenes():
    images, labels = _items()
    return compose(images, labels, 200, seed=5)


@pytest.mark.fashion
def test_masks_and_boxes_agree_with_the_pixels(scenes) -> None:
    s = scenes
    on = (s.masks > 0) & (s.masks != IGNORE_INDEX)
    # every item pixel is bright, every background pixel is (mild) noise or a faint rim
    assert float(s.images[:, 0][on].min()) > 0.25
    assert torch.equal(on, s.owner >= 0)
    for n in range(len(s.masks)):
        for x1, y1, x2, y2, cls in s.boxes[n].tolist():
            if cls < 0:
                continue
            x1, y1, x2, y2 = int(x1), int(y1), int(x2), int(y2)
            inside = s.masks[n, y1:y2, x1:x2]
            assert (inside == cls + 1).sum() >= 12, (n, cls)  # min_visible pixels of its class
            assert 0 <= x1 < x2 <= 64 and 0 <= y1 < y2 <= 64
    # boxes come first, padding last; 1..4 items a scene at most
    valid = s.boxes[:, :, 4] >= 0
    assert torch.equal(valid, valid.sort(dim=1, descending=True).values)
    assert valid.sum(1).max() <= 4


@pytest.mark.fashion
def test_box_is_exactly_the_extent_of_the_owned_pixels() -> None:
    images, labels = _items(500)
    s = compose(images, labels, 50, seed=1, items=(1, 1), min_visible=1)
    for n in range(50):
        ys, xs = (s.owner[n] == 0).nonzero(as_tuple=True)
        if len(ys) == 0:
            assert (s.boxes[n, :, 4] < 0).all()
            continue
        expected = [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]
        assert s.boxes[n, 0, :4].tolist() == expected
        assert int(s.boxes[n, 0, 4]) == int(s.masks[n][s.owner[n] == 0][0]) - 1


@pytest.mark.fashion
def test_generation_is_deterministic_and_seeded() -> None:
    images, labels = _items(500)
    a = compose(images, labels, 20, seed=3)
    b = compose(images, labels, 20, seed=3)
    c = compose(images, labels, 20, seed=4)
    assert torch.equal(a.images, b.images) and torch.equal(a.masks, b.masks) and torch.equal(a.boxes, b.boxes)
    assert not torch.equal(a.images, c.images)


@pytest.mark.fashion
def test_the_data_set_factory_checks_its_parameters() -> None:
    from kdcore_plugin_dense.datasets import fashion_scenes
    with pytest.raises(UserError, match=r"data.scale: \[40, 30\]"):
        fashion_scenes(scale=(40, 30))
    with pytest.raises(UserError, match=r"data.task: unknown task 'segment'"):
        fashion_scenes(task="segment")


def test_crop_and_flip_move_masks_with_the_image() -> None:
    x = torch.arange(3 * 6 * 6, dtype=torch.float32).view(3, 1, 6, 6)
    masks = x[:, 0].long()  # the mask's value names its pixel
    for op in (RandomCrop(padding=2, fill=-1.0), HorizontalFlip(p=0.5)):
        out, moved = op.apply(x, masks, torch.Generator().manual_seed(0), kind="mask", mask_fill=IGNORE_INDEX)
        padding = moved == IGNORE_INDEX
        assert torch.equal(out[:, 0][~padding], moved[~padding].float())
        assert torch.equal(out[:, 0][padding], torch.full_like(out[:, 0][padding], -1.0))


def test_crop_and_flip_move_boxes_with_the_image() -> None:
    # one bright 2x3 block per image; its box must follow it through every crop and flip
    x = torch.zeros(16, 1, 10, 10)
    x[:, :, 3:5, 4:7] = 1.0
    boxes = torch.tensor([[4.0, 3.0, 7.0, 5.0, 2.0], [-1, -1, -1, -1, -1]]).repeat(16, 1, 1)
    for op in (RandomCrop(padding=3), HorizontalFlip(p=0.5)):
        out, moved = op.apply(x, boxes, torch.Generator().manual_seed(1), kind="boxes")
        for n in range(16):
            ys, xs = (out[n, 0] > 0.5).nonzero(as_tuple=True)
            if len(ys) == 0:
                assert moved[n, 0, 4] < 0  # cropped out: dropped
                continue
            assert moved[n, 0].tolist() == [xs.min().item(), ys.min().item(), xs.max().item() + 1,
                                            ys.max().item() + 1, 2.0]
            assert moved[n, 1].tolist() == [-1.0] * 5  # padding stays padding


def test_a_box_leaving_the_crop_is_clipped_then_dropped() -> None:
    x = torch.zeros(1, 1, 10, 10)
    boxes = torch.tensor([[[0.0, 0.0, 2.0, 2.0, 1.0]]])
    crop = RandomCrop(padding=4)
    # find a draw that shifts the view right/down by 4: the box leaves the image
    for seed in range(200):
        _, moved = crop.apply(x, boxes, torch.Generator().manual_seed(seed), kind="boxes")
        g = torch.Generator().manual_seed(seed)
        oy, ox = torch.randint(0, 9, (1,), generator=g).item(), torch.randint(0, 9, (1,), generator=g).item()
        dy, dx = oy - 4, ox - 4
        if dx >= 2 or dy >= 2:
            assert moved[0, 0].tolist() == [-1.0] * 5
        else:
            assert moved[0, 0].tolist() == [max(0, -dx), max(0, -dy), min(10, 2 - dx), min(10, 2 - dy), 1.0]
