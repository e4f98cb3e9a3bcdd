"""Whole-batch random augmentation on the in-memory path: correct, seeded, resumable."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from kdcore.cli import main
from kdcore.components import Batch
from kdcore.config import ComponentConfig
from kdcore.data import TensorSplit
from kdcore.data.augment import HorizontalFlip, RandomCrop, build_augment
from kdcore.engine.batches import TrainBatches
from kdcore.errors import UserError


def test_random_crop_matches_pad_then_slice_per_sample() -> None:
    x = torch.arange(2 * 1 * 5 * 5, dtype=torch.float32).view(2, 1, 5, 5)
    g = torch.Generator().manual_seed(3)
    out = RandomCrop(padding=2, fill=-1.0)(x, g)
    g = torch.Generator().manual_seed(3)
    oy, ox = torch.randint(0, 5, (2,), generator=g), torch.randint(0, 5, (2,), generator=g)
    for b in range(2):
        padded = torch.full((1, 9, 9), -1.0)
        padded[:, 2:7, 2:7] = x[b]
        assert torch.equal(out[b], padded[:, oy[b]:oy[b] + 5, ox[b]:ox[b] + 5])


def test_hflip_flips_exactly_the_drawn_samples() -> None:
    x = torch.randn(64, 1, 3, 4)
    g = torch.Generator().manual_seed(0)
    out = HorizontalFlip(p=0.5)(x, g)
    flipped = torch.rand(64, generator=torch.Generator().manual_seed(0)) < 0.5
    assert torch.equal(out[flipped], x[flipped].flip(-1))
    assert torch.equal(out[~flipped], x[~flipped])
    assert 10 < int(flipped.sum()) < 54


DATA = TensorSplit(torch.randn(40, 1, 6, 6, generator=torch.Generator().manual_seed(0)),
                   torch.arange(40) % 3)


def batches(augment) -> TrainBatches:
    return TrainBatches(DATA, 8, seed=1, device=torch.device("cpu"), augment=augment)


def test_same_seed_epoch_step_same_batch_and_resume_exact() -> None:
    augment = build_augment([ComponentConfig("random_crop", {"padding": 2}), ComponentConfig("hflip")])
    full = list(batches(augment).epoch(2))
    again = list(batches(augment).epoch(2))
    resumed = list(batches(augment).epoch(2, start_step=3))
    assert all(torch.equal(a.inputs, b.inputs) for a, b in zip(full, again))
    assert all(torch.equal(a.inputs, b.inputs) for a, b in zip(full[3:], resumed))
    plain = list(batches(None).epoch(2))
    assert not all(torch.equal(a.inputs, b.inputs) for a, b in zip(full, plain))
    assert all(torch.equal(a.indices, b.indices) for a, b in zip(full, plain))  # same order
    other_epoch = list(batches(augment).epoch(3))
    assert isinstance(full[0], Batch) and not torch.equal(full[0].inputs, other_epoch[0].inputs)


def test_processes_augment_their_rows_as_one_process_would() -> None:
    # under DDP rank r takes its slice of each global batch; the augmentation of a sample must
    # not depend on the number of processes (so 2 processes match 1, and resume across counts)
    augment = build_augment([ComponentConfig("random_crop", {"padding": 2}), ComponentConfig("hflip")])
    one = list(TrainBatches(DATA, 8, seed=1, device=torch.device("cpu"), augment=augment).epoch(1))
    ranks = [list(TrainBatches(DATA, 8, seed=1, device=torch.device("cpu"), augment=augment,
                               rank=r, world=2).epoch(1)) for r in (0, 1)]
    assert len(one) == len(ranks[0]) == len(ranks[1]) == 5
    for whole, first, second in zip(one, *ranks):
        assert torch.equal(torch.cat([first.indices, second.indices]), whole.indices)
        assert torch.equal(torch.cat([first.inputs, second.inputs]), whole.inputs)


def test_unknown_augmentation_and_bad_parameter() -> None:
    with pytest.raises(UserError, match=r"data.augment\[0\].type: unknown augmentation 'hflipp' \(did you mean 'hflip'"):
        build_augment([ComponentConfig("hflipp")])
    with pytest.raises(UserError, match=r"data.augment\[0\].paddin: unknown parameter \(did you mean 'padding'"):
        build_augment([ComponentConfig("random_crop", {"paddin": 2})])


@pytest.mark.fashion
def test_augmented_run_trains(tmp_path, tiny) -> None:
    args = ["run", "--output-dir", str(tmp_path), "--set",
            "data.augment=[{type: random_crop, padding: 2}, {type: hflip}]"]
    for item in tiny:
        args += ["--set", item]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output


def test_an_augmentation_that_cannot_move_the_targets_is_refused_by_name() -> None:
    class Labels:
        target_kind = "mask"

    class Blur:
        moves = ("label",)

        def __init__(self) -> None: ...

    from kdcore.data import augment as module
    module.AUGMENTATIONS["blur_test"] = Blur
    try:
        with pytest.raises(UserError, match=r"data.augment\[1\].type: 'blur_test' cannot move this data set's targets \(mask\)"):
            build_augment([ComponentConfig("hflip"), ComponentConfig("blur_test")], Labels())
    finally:
        del module.AUGMENTATIONS["blur_test"]


# --- masks and boxes move with the pixels -------------------------------------------------------
# Scenes drawn by hand, so the core tests its own target moves without a dense-task plugin: two
# blocks per 8x8 image, one at the top-left corner (value 1, class 3) and one at the bottom-right
# (value 2, class 1). A crop by up to 3 pixels shifts a block whole, clips it or pushes it out.

IGNORE = 99  # a task's ignore_index, not the default 255, so the test sees the task's value used


class MaskTask:
    target_kind = "mask"
    ignore_index = IGNORE


class BoxTask:
    target_kind = "boxes"


def drawn_scenes(n: int = 64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` images with the two blocks, their masks (the class on each block, 0 elsewhere) and
    their boxes ``(n, 3, 5)``: one row a block, then a padding row (class -1)."""
    x = torch.zeros(n, 1, 8, 8)
    x[:, :, 0:2, 0:2] = 1.0
    x[:, :, 6:8, 5:8] = 2.0
    masks = torch.zeros(n, 8, 8, dtype=torch.long)
    masks[:, 0:2, 0:2] = 3
    masks[:, 6:8, 5:8] = 1
    boxes = torch.tensor([[0.0, 0.0, 2.0, 2.0, 3.0], [5.0, 6.0, 8.0, 8.0, 1.0], [-1.0] * 5]).repeat(n, 1, 1)
    return x, masks, boxes


def assert_masks_follow(out: torch.Tensor, moved: torch.Tensor, fill: float) -> None:
    """Each block's mask lies exactly on its pixels, and the padding pixels are the ignored ones."""
    assert moved.dtype == torch.long
    assert torch.equal(out[:, 0] == 1.0, moved == 3)
    assert torch.equal(out[:, 0] == 2.0, moved == 1)
    assert torch.equal(out[:, 0] == fill, moved == IGNORE)


def box_outcomes(out: torch.Tensor, moved: torch.Tensor) -> set[str]:
    """Check each box is its block's pixel extent, or dropped (all -1) once no pixel of it is left,
    and the padding row stays padding; returns what happened to the boxes (whole, clipped,
    dropped)."""
    seen = set()
    for n in range(len(out)):
        for row, (value, cls, area) in enumerate([(1.0, 3.0, 4), (2.0, 1.0, 6)]):
            ys, xs = (out[n, 0] == value).nonzero(as_tuple=True)
            if len(ys) == 0:
                assert moved[n, row].tolist() == [-1.0] * 5, (n, row)
                seen.add("dropped")
                continue
            extent = [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1, cls]
            assert moved[n, row].tolist() == extent, (n, row)
            seen.add("whole" if len(ys) == area else "clipped")
        assert moved[n, 2].tolist() == [-1.0] * 5
    return seen


def test_random_crop_moves_masks_exactly_with_the_pixels_and_pads_them_with_the_ignore_index() -> None:
    x, masks, _ = drawn_scenes()
    out, moved = RandomCrop(padding=3, fill=-1.0).apply(x, masks, torch.Generator().manual_seed(0),
                                                        kind="mask", mask_fill=IGNORE)
    g = torch.Generator().manual_seed(0)
    oy, ox = torch.randint(0, 7, (64,), generator=g), torch.randint(0, 7, (64,), generator=g)
    for n in range(64):  # the mask padded by 3 with the ignore index, cut at the image's offsets
        padded = torch.full((14, 14), IGNORE, dtype=torch.long)
        padded[3:11, 3:11] = masks[n]
        assert torch.equal(moved[n], padded[oy[n]:oy[n] + 8, ox[n]:ox[n] + 8])
    assert_masks_follow(out, moved, fill=-1.0)
    assert (moved == IGNORE).any() and not torch.equal(moved, masks)


def test_hflip_mirrors_exactly_the_flipped_samples_masks() -> None:
    x, masks, _ = drawn_scenes()
    out, moved = HorizontalFlip(p=0.5).apply(x, masks, torch.Generator().manual_seed(0), kind="mask",
                                             mask_fill=IGNORE)
    flipped = torch.rand(64, generator=torch.Generator().manual_seed(0)) < 0.5
    assert torch.equal(moved[flipped], masks[flipped].flip(-1))
    assert torch.equal(moved[~flipped], masks[~flipped])
    assert_masks_follow(out, moved, fill=-1.0)
    assert 10 < int(flipped.sum()) < 54


def test_random_crop_moves_boxes_with_the_pixels_clips_them_and_drops_those_that_leave() -> None:
    x, _, boxes = drawn_scenes()
    out, moved = RandomCrop(padding=3).apply(x, boxes, torch.Generator().manual_seed(0), kind="boxes")
    assert box_outcomes(out, moved) == {"whole", "clipped", "dropped"}


def test_hflip_mirrors_the_boxes_of_the_flipped_samples() -> None:
    x, _, boxes = drawn_scenes()
    out, moved = HorizontalFlip(p=0.5).apply(x, boxes, torch.Generator().manual_seed(0), kind="boxes")
    flipped = torch.rand(64, generator=torch.Generator().manual_seed(0)) < 0.5
    assert moved[flipped][:, 0].tolist() == [[6.0, 0.0, 8.0, 2.0, 3.0]] * int(flipped.sum())
    assert torch.equal(moved[~flipped], boxes[~flipped])
    assert box_outcomes(out, moved) == {"whole"}


@pytest.mark.parametrize("task", [MaskTask(), BoxTask()], ids=["mask", "boxes"])
def test_the_tasks_target_kind_and_ignore_index_reach_every_augmentation(task) -> None:
    augment = build_augment([ComponentConfig("random_crop", {"padding": 3, "fill": -1.0}),
                             ComponentConfig("hflip")], task)
    x, masks, boxes = drawn_scenes()
    out, moved = augment(x, masks if task.target_kind == "mask" else boxes, seed=1, epoch=0, step=0)
    if task.target_kind == "mask":
        assert_masks_follow(out, moved, fill=-1.0)
    else:
        assert box_outcomes(out, moved) == {"whole", "clipped", "dropped"}
