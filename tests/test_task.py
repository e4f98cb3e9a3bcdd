"""The classification task's loss: mean cross-entropy over labelled samples (target -1 = none)."""

from __future__ import annotations

import math

import pytest
import torch

from kdcore.task import ClassificationTask

LOGITS = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 3.0]])


def ce(row: torch.Tensor, target: int) -> float:
    return float(torch.logsumexp(row, 0) - row[target])


def test_mean_over_labelled_samples_only() -> None:
    targets = torch.tensor([0, -1, 1])
    expected = (ce(LOGITS[0], 0) + ce(LOGITS[2], 1)) / 2  # the -1 sample counts nowhere
    for partial in (False, True):
        task = ClassificationTask(3, partial_labels=partial)
        assert float(task.loss(LOGITS, targets)) == pytest.approx(expected, rel=1e-6)


def test_hand_computed_value() -> None:
    # log(e^2 + 2) - 2 for the first row, log(e + 2) - 1 for the second, log(e^3 + 2) - 3
    targets = torch.tensor([0, 1, 2])
    expected = (math.log(math.e ** 2 + 2) - 2 + math.log(math.e + 2) - 1 + math.log(math.e ** 3 + 2) - 3) / 3
    assert float(ClassificationTask(3).loss(LOGITS, targets)) == pytest.approx(expected, rel=1e-6)


def test_a_batch_without_labels_gives_zero_with_partial_labels() -> None:
    logits = LOGITS.clone().requires_grad_(True)
    unlabelled = torch.full((3,), -1)
    loss = ClassificationTask(3, partial_labels=True).loss(logits, unlabelled)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(logits.grad, torch.zeros_like(logits))
    # without the flag the plain mean is 0/0: the loop's non-finite check then names the term
    assert math.isnan(float(ClassificationTask(3).loss(LOGITS, unlabelled)))


@pytest.mark.fashion
def test_data_labelled_masks_targets_and_sets_partial_labels(tiny) -> None:
    from importlib import resources

    from kdcore.assemble import load_data
    from kdcore.config import load_config, read_yaml

    preset = str(resources.files("kdcore") / "presets" / "teacher_student.yaml")
    full = load_data(load_config(read_yaml(preset), tiny).data)
    assert not full.source.task.partial_labels
    splits = load_data(load_config(read_yaml(preset), [*tiny, "data.labelled=40"]).data)
    assert splits.source.task.partial_labels
    targets = splits.student_train.targets
    assert int((targets >= 0).sum()) == 40 and int((targets == -1).sum()) == len(targets) - 40
    assert torch.equal(splits.train.targets, full.train.targets)  # teachers keep every label
