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
def test_cache_with_augmentation_is_refused_with_the_reason(tmp_path, tiny) -> None:
    args = ["run", "--output-dir", str(tmp_path), "--set", "data.augment=[{type: hflip}]",
            "--set", "trainer.teacher_cache=true"]
    for item in tiny:
        args += ["--set", item]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert "draws new random crops and flips every epoch" in result.output


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
