"""The loop's own-step branch (an algorithm with its own optimizers calls ``update(loss, name)``)
and the pre-trainings that run through it (``run_stage``)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import kdcore
from kdcore.components.distiller import DistillPoint
from kdcore.data import TensorSplit
from kdcore.engine.batches import TrainBatches
from kdcore.engine.loop import STAGE_KEPT, LoopSettings, NonFiniteLoss, TrainingState, run_stage, train_epochs
from kdcore.errors import UserError
from kdcore.task import ClassificationTask
from kdcore.taps import Tap

LR = 0.1


class InTurns(nn.Module):
    """Two linear layers, each with its own optimizer, updated in turns: ``a`` on its own loss,
    then ``b`` on a loss that reads ``a``'s updated weights."""

    def __init__(self, nan_at: dict[str, int] | None = None) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 2), nn.Linear(4, 2)
        self.nan_at = nan_at or {}
        self.calls: list[tuple[str, int, bool]] = []
        self.dtypes: list[torch.dtype] = []

    def loss_a(self, x: torch.Tensor) -> torch.Tensor:
        out = self.a(x)
        self.dtypes.append(out.dtype)
        return out.float().pow(2).mean()

    def loss_b(self, x: torch.Tensor) -> torch.Tensor:
        return (self.b(x) - self.a(x).detach()).float().pow(2).mean()

    def optimization_step(self, batch, *, epoch: int, step: int, update) -> dict[str, torch.Tensor]:
        terms = {}
        for name, loss_of in (("a", self.loss_a), ("b", self.loss_b)):
            loss = loss_of(batch.inputs)
            if self.nan_at.get(name) == step:
                loss = loss * float("nan")
            self.calls.append((name, step, update(loss, name)))
            terms[name] = loss.detach()
        return terms


def batches() -> TrainBatches:
    data = TensorSplit(torch.randn(12, 4, generator=torch.Generator().manual_seed(1)), torch.arange(12) % 2)
    return TrainBatches(data, 4, seed=0, device=torch.device("cpu"))


def fit(model: InTurns, epochs: int = 1, **settings):
    optimizers = {"a": torch.optim.SGD(model.a.parameters(), lr=LR),
                  "b": torch.optim.SGD(model.b.parameters(), lr=LR)}
    schedulers = {n: torch.optim.lr_scheduler.StepLR(o, step_size=1, gamma=0.5) for n, o in optimizers.items()}
    rows: list[dict[str, float]] = []
    state = train_epochs(model, batches(), TrainingState(), LoopSettings(
        epochs, optimizers, schedulers, progress=False,
        on_epoch_end=lambda state, summary: rows.append(summary), **settings))
    return state, rows, schedulers


def by_hand(model: InTurns, steps: int, skip: dict[str, int] | None = None) -> InTurns:
    """The same updates written out in plain PyTorch (lr halves after every batch)."""
    model = copy.deepcopy(model)
    skip = skip or {}
    for step, batch in enumerate(batches().epoch(0)):
        if step == steps:
            break
        lr = LR * 0.5 ** step
        for name, loss_of in (("a", model.loss_a), ("b", model.loss_b)):
            layer = getattr(model, name)
            loss = loss_of(batch.inputs)
            grads = torch.autograd.grad(loss, list(layer.parameters()))
            if skip.get(name) != step:
                with torch.no_grad():
                    for p, g in zip(layer.parameters(), grads):
                        p -= lr * g
    return model


def test_two_optimizers_update_in_turns_as_written_by_hand() -> None:
    torch.manual_seed(0)
    model = InTurns()
    before = copy.deepcopy(model)
    expected = by_hand(model, steps=3)
    state, rows, schedulers = fit(model)
    assert [c[:2] for c in model.calls] == [("a", 0), ("b", 0), ("a", 1), ("b", 1), ("a", 2), ("b", 2)]
    assert all(stepped for _, _, stepped in model.calls)
    for name in ("a", "b"):  # both moved, exactly as by hand: b's loss saw a's new weights
        for p, q, r in zip(getattr(model, name).parameters(), getattr(expected, name).parameters(),
                           getattr(before, name).parameters()):
            assert not torch.equal(p, r)
            torch.testing.assert_close(p, q, rtol=0, atol=1e-7)
    assert all(s.last_epoch == 3 for s in schedulers.values())  # every schedule, once per batch
    assert state.global_step == 3 and set(rows[0]) >= {"a", "b", "loss"}


def test_a_nan_loss_stops_naming_the_optimizer_and_the_step() -> None:
    torch.manual_seed(0)
    with pytest.raises(NonFiniteLoss, match=r"loss for optimizer 'b' is nan at epoch 1, step 1; stopped"):
        fit(InTurns(nan_at={"b": 1}))


def test_a_nan_loss_is_skipped_for_its_optimizer_alone_and_the_batch_counted() -> None:
    torch.manual_seed(0)
    model = InTurns(nan_at={"b": 1})
    expected = by_hand(model, steps=3, skip={"b": 1})
    _, rows, schedulers = fit(model, on_nonfinite="skip")
    assert ("a", 1, True) in model.calls and ("b", 1, False) in model.calls
    for p, q in zip(model.parameters(), expected.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-7)
    assert rows[0]["skipped_batches"] == 1  # the batch is not in the epoch's means
    assert all(s.last_epoch == 3 for s in schedulers.values())  # skipped or not


def test_skips_in_a_row_stop_as_on_the_default_path() -> None:
    class Broken(InTurns):
        def loss_b(self, x):
            return super().loss_b(x) * float("nan")

    torch.manual_seed(0)
    with pytest.raises(NonFiniteLoss, match=r"skipped 2 batches in a row \(trainer.max_skipped_in_row; "
                                            r"the last: loss for optimizer 'b' is nan at epoch 1, step 1\)"):
        fit(Broken(), on_nonfinite="skip", max_skipped_in_row=2)
    with pytest.raises(NonFiniteLoss, match=r"skipped all 3 batches of train epoch 1"):
        fit(Broken(), on_nonfinite="skip", max_skipped_in_row=10)


def test_bf16_autocasts_the_forward_passes_and_still_steps_both() -> None:
    torch.manual_seed(0)
    model = InTurns()
    before = copy.deepcopy(model)
    fit(model, amp="bf16")
    assert set(model.dtypes) == {torch.bfloat16}
    assert all(not torch.equal(p, q) for p, q in zip(model.parameters(), before.parameters()))
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_grad_clip_holds_each_optimizers_step_to_the_norm() -> None:
    torch.manual_seed(0)
    model = InTurns()
    before = copy.deepcopy(model)
    fit(model, epochs=1, grad_clip=1e-3)
    for name in ("a", "b"):
        moved = torch.cat([(p - q).flatten() for p, q in zip(getattr(model, name).parameters(),
                                                               getattr(before, name).parameters())])
        assert 0 < moved.norm() <= LR * 1e-3 * 3 * 1.0001  # three steps, each at most lr * clip


def test_an_unknown_optimizer_name_is_named() -> None:
    class Wrong(InTurns):
        def optimization_step(self, batch, *, epoch, step, update):
            update(self.loss_a(batch.inputs), "generator")
            return {}

    with pytest.raises(UserError, match=r"update\(loss, 'generator'\): .* it has 'a', 'b'"):
        fit(Wrong())


# ---------------------------------------------------------------- pre-trainings through the loop

def staged(loss=None, **options):
    """A student (Linear 4->3), a teacher (Linear 4->5), a connector 3->5 and a pre-training on
    the MSE between the connected student output and the teacher's."""
    torch.manual_seed(0)
    connector = nn.Linear(3, 5)
    head = kdcore.DistillationHead({"l": (1.0, nn.MSELoss())}, student_connector=connector)
    distiller = kdcore.Distiller({"t": nn.Linear(4, 5)}, [DistillPoint("p", "t", Tap("output"), Tap("output"), head)])
    algorithm = kdcore.build("algorithm", "teacher_student", student=nn.Linear(4, 3),
                             task=ClassificationTask(3), distiller=distiller)
    loss = loss or (lambda s, t, **extra: nn.functional.mse_loss(connector(s), t))
    return algorithm, kdcore.PreTraining("warm", 2, loss, **options)


def test_a_pre_training_steps_as_the_old_stage_loop_did() -> None:
    algorithm, pretraining = staged()
    reference = copy.deepcopy(algorithm)
    history = run_stage(algorithm, "p", pretraining, batches(), LoopSettings(1, progress=False))
    # the old run_stage's loop: SGD (momentum 0.9) at the stage's lr, zero_grad/backward/step
    student, connector = reference.student, reference.distiller.heads["p"].student_connector
    teacher = reference.distiller.teachers["t"]
    optimizer = torch.optim.SGD([*student.parameters(), *connector.parameters()], lr=0.01, momentum=0.9)
    losses = []
    for epoch in range(2):
        for batch in batches().epoch(epoch):
            loss = nn.functional.mse_loss(connector(student(batch.inputs)), teacher(batch.inputs))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    for p, q in zip(algorithm.student.parameters(), student.parameters()):
        assert torch.equal(p, q)
    assert list(history) == ["warm_epoch1", "warm_epoch2"]
    assert history["warm_epoch2"] == pytest.approx(sum(losses[3:]) / 3)  # equal batches of 4


def test_a_pre_training_reads_its_loss_once_a_step(monkeypatch) -> None:
    """update() reads the loss for the NaN/Inf check; the loop logs that value, no second copy."""
    from kdcore.engine import loop

    reads = []
    monkeypatch.setattr(loop, "read_values", lambda values: reads.append(values) or [])
    algorithm, pretraining = staged()
    history = run_stage(algorithm, "p", pretraining, batches(), LoopSettings(1, progress=False))
    assert reads == [] and history["warm_epoch1"] > 0


def test_a_pre_training_gets_the_runs_grad_clip() -> None:
    (clipped, pretraining), (free, free_pretraining) = staged(), staged()
    before = [p.detach().clone() for p in clipped.student.parameters()]
    run_stage(clipped, "p", pretraining, batches(), LoopSettings(1, progress=False, grad_clip=1e-4))
    run_stage(free, "p", free_pretraining, batches(), LoopSettings(1, progress=False))
    moved = [sum((p - q).norm() for p, q in zip(algorithm.student.parameters(), before))
             for algorithm in (clipped, free)]
    assert 0 < moved[0] < moved[1] / 10


def test_a_nan_in_a_pre_training_stops_naming_it_and_what_is_kept() -> None:
    algorithm, pretraining = staged(loss=lambda s, t, step, **extra: (s.sum() - t.sum()) ** 2 * (
        float("nan") if step == 1 else 1.0))
    with pytest.raises(NonFiniteLoss) as caught:
        run_stage(algorithm, "p", pretraining, batches(), LoopSettings(1, progress=False))
    message = str(caught.value)
    assert message.startswith("stage 'warm' of distill point 'p': loss is nan "
                              "at epoch 1, step 1; stopped, " + STAGE_KEPT)
    history = run_stage(algorithm, "p", pretraining, batches(), LoopSettings(1, progress=False, on_nonfinite="skip"))
    assert history["warm_skipped_batches"] == 1


def test_deep_mutual_learning_trains_through_the_loop() -> None:
    """The in-repo own-step algorithm (kdcore-plugin-dml) with the loop's update: both students
    move, every term is logged, and each optimizer's schedule steps once per batch."""
    dml = pytest.importorskip("kdcore_plugin_dml.algorithms")
    torch.manual_seed(0)
    algorithm = dml.DeepMutualLearning(nn.Linear(4, 2), ClassificationTask(2), num_classes=2,
                                       input_shape=(4,), peers=[nn.Linear(4, 2)])
    before = copy.deepcopy(algorithm)
    optimizers = algorithm.optimizers(lambda groups: torch.optim.SGD(groups, lr=LR))
    schedulers = {n: torch.optim.lr_scheduler.LambdaLR(o, lambda step: 1.0) for n, o in optimizers.items()}
    rows: list[dict[str, float]] = []
    train_epochs(algorithm, batches(), TrainingState(), LoopSettings(
        1, optimizers, schedulers, progress=False,
        on_epoch_end=lambda state, summary: rows.append(summary)))
    assert set(rows[0]) >= {"student0_ce", "student0_kl", "student1_ce", "student1_kl", "loss"}
    for new, old in zip(algorithm.students, before.students):
        assert not torch.equal(new.weight, old.weight)
    assert all(s.last_epoch == 3 for s in schedulers.values())


def test_the_old_name_stage_still_works_and_says_it_is_deprecated() -> None:
    with pytest.warns(DeprecationWarning, match=r"kdcore.Stage is deprecated: use kdcore.PreTraining"):
        old = kdcore.Stage
    assert old is kdcore.PreTraining
    with pytest.warns(DeprecationWarning):
        from kdcore.components import Stage
    assert Stage is kdcore.PreTraining
