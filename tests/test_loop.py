"""The training loop's contract with algorithms: scalar terms, one readout per step."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kdcore.components import Algorithm
from kdcore.data import TensorSplit
from kdcore.engine.batches import TrainBatches
from kdcore.engine.loop import ENGINE_OPTIMIZER, LoopSettings, TrainingState, train_epochs
from kdcore.errors import UserError
from kdcore.task import ClassificationTask


class Shaped(Algorithm):
    """Returns the task loss plus a term of the given shape."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__(nn.Linear(4, 3), ClassificationTask(3))
        self.shape = shape

    def training_step(self, batch, *, epoch: int, step: int) -> dict[str, torch.Tensor]:
        out = self.student(batch.inputs)
        return {"task": self.task.loss(out, batch.targets), "extra": out.abs().mean().expand(self.shape) * 1.0}


def train(shape: tuple[int, ...]) -> dict[str, float]:
    torch.manual_seed(0)
    algorithm = Shaped(shape)
    data = TensorSplit(torch.randn(16, 4), torch.arange(16) % 3)
    batches = TrainBatches(data, 4, seed=0, device=torch.device("cpu"))
    optimizer = torch.optim.SGD(algorithm.trainable_parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    rows = []
    train_epochs(algorithm, batches, TrainingState(),
                 LoopSettings(1, {ENGINE_OPTIMIZER: optimizer}, {ENGINE_OPTIMIZER: scheduler}, progress=False,
                              on_epoch_end=lambda pos, summary: rows.append(summary)))
    return rows[0]


def test_scalar_and_one_element_terms_train_alike() -> None:
    scalar, one = train(()), train((1,))
    assert scalar["extra"] == pytest.approx(one["extra"]) and scalar["task"] == pytest.approx(one["task"])
    assert scalar["extra"] > 0


def test_a_term_that_is_not_a_scalar_is_named() -> None:
    with pytest.raises(UserError, match=r"loss term 'extra' has shape \(3,\); a loss must return a scalar"):
        train((3,))


@pytest.mark.filterwarnings("error")  # torch's scheduler-order warning is not for skipped steps
def test_steps_the_fp16_loss_scaler_skips_are_counted() -> None:
    # a scale of 2^127 overflows float32 for any loss above 2: GradScaler skips those steps and
    # halves its scale until the scaled gradients are finite again
    torch.manual_seed(0)
    algorithm = Shaped(())
    data = TensorSplit(torch.randn(64, 4) * 100, torch.arange(64) % 3)
    batches = TrainBatches(data, 4, seed=0, device=torch.device("cpu"))
    optimizer = torch.optim.SGD(algorithm.trainable_parameters(), lr=1e-4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 127)
    weights, rows = [algorithm.student.weight.detach().clone()], []
    train_epochs(algorithm, batches, TrainingState(), LoopSettings(
        1, {ENGINE_OPTIMIZER: optimizer}, {ENGINE_OPTIMIZER: scheduler}, progress=False, scaler=scaler,
        on_step=lambda pos: weights.append(algorithm.student.weight.detach().clone()),
        on_epoch_end=lambda pos, summary: rows.append(summary)))
    unchanged = sum(torch.equal(a, b) for a, b in zip(weights, weights[1:]))
    assert 0 < unchanged < len(batches)
    assert rows[0]["scaler_skipped_steps"] == unchanged
    assert rows[0].get("skipped_batches", 0) == 0  # the losses were finite


class NaNGradient(Algorithm):
    """A finite loss (0) whose gradient is NaN: sqrt at 0."""

    def __init__(self) -> None:
        super().__init__(nn.Linear(4, 3), ClassificationTask(3))

    def training_step(self, batch, *, epoch: int, step: int) -> dict[str, torch.Tensor]:
        out = self.student(batch.inputs)
        return {"flat": torch.sqrt(((out - out.detach()) ** 2).sum(1)).mean()}


def test_every_skipped_step_is_counted_even_once_the_scale_has_fallen_to_zero() -> None:
    # the scale halves on every skip; from 2^-148 it is 0.0 after two, and stays there
    algorithm = NaNGradient()
    data = TensorSplit(torch.randn(64, 4), torch.arange(64) % 3)
    batches = TrainBatches(data, 4, seed=0, device=torch.device("cpu"))
    optimizer = torch.optim.SGD(algorithm.trainable_parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** -148)
    before, rows = algorithm.student.weight.detach().clone(), []
    train_epochs(algorithm, batches, TrainingState(), LoopSettings(
        2, {ENGINE_OPTIMIZER: optimizer}, {ENGINE_OPTIMIZER: scheduler}, progress=False, scaler=scaler,
        on_epoch_end=lambda pos, summary: rows.append(summary)))
    assert scaler.get_scale() == 0.0 and torch.equal(algorithm.student.weight, before)
    assert [r["scaler_skipped_steps"] for r in rows] == [len(batches), len(batches)]


def test_the_loss_is_the_terms_added_in_order_and_read_once() -> None:
    from kdcore.engine.loop import read_values, sum_terms
    w = torch.tensor([1.0, 2.0], requires_grad=True)
    terms = {"a": (w * 3).sum(), "b": (w ** 2).sum(), "c": w[0] - w[1]}
    loss, scalars = sum_terms(terms)
    assert loss.item() == 9.0 + 5.0 - 1.0 and read_values(scalars) == [9.0, 5.0, -1.0]
    loss.backward()
    assert w.grad.tolist() == [3 + 2 + 1, 3 + 4 - 1]  # every term reaches the gradient


def test_low_precision_and_one_element_terms_become_float32_scalars() -> None:
    from kdcore.engine.loop import sum_terms
    half = torch.tensor(1.5, dtype=torch.bfloat16)
    loss, scalars = sum_terms({"a": half, "b": half * 2})  # all bf16: the sum is not float32
    assert loss.dtype == torch.float32 and loss.dim() == 0 and loss.item() == 4.5
    assert all(s.dtype == torch.float32 for s in scalars)
    loss, scalars = sum_terms({"a": torch.tensor([2.0]), "b": torch.tensor(1.0)})
    assert loss.shape == () and [s.shape for s in scalars] == [(), ()] and loss.item() == 3.0


def test_a_term_that_broadcasts_is_named_and_no_terms_is_refused() -> None:
    from kdcore.engine.loop import sum_terms
    with pytest.raises(UserError, match=r"loss term 'wide' has shape \(4,\)"):
        sum_terms({"ok": torch.tensor(1.0), "wide": torch.ones(4)})
    with pytest.raises(UserError, match="returned no loss terms"):
        sum_terms({})


def test_nonfinite_tensors_names_the_broken_weights_and_passes_over_extra_state() -> None:
    from kdcore.engine.loop import nonfinite_tensors

    state = {"ok": torch.ones(3), "bad": torch.tensor([1.0, float("nan")]), "steps": torch.tensor(4),
             "extra": {"generator": "state"}, "empty": torch.zeros(0)}
    assert nonfinite_tensors(state) == ["bad"]
    assert nonfinite_tensors({"extra": {"a": 1}, "n": torch.tensor(2)}) == []
