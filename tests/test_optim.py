"""Optimizers from the config: the fused kernel where PyTorch has one, the same update."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from kdcore.config import OptimizerConfig, ScheduleConfig
from kdcore.engine.optim import lr_schedule, make_optimizer


def trained(cfg: OptimizerConfig, steps: int = 5) -> torch.Tensor:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    optimizer = make_optimizer(model.parameters(), cfg)
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_fused_is_used_where_available_and_matches_the_standard_update() -> None:
    for kind in ("sgd", "adam", "adamw"):
        fused_cfg, plain_cfg = OptimizerConfig(type=kind, lr=0.05), OptimizerConfig(type=kind, lr=0.05, fused=False)
        probe = make_optimizer([nn.Parameter(torch.zeros(2))], fused_cfg)
        assert probe.defaults.get("fused") is True, kind
        assert not make_optimizer([nn.Parameter(torch.zeros(2))], plain_cfg).defaults.get("fused")
        torch.testing.assert_close(trained(fused_cfg), trained(plain_cfg), rtol=1e-5, atol=1e-6)


def test_no_fused_kernel_falls_back_to_the_standard_one(monkeypatch) -> None:
    class NoFusedSGD(torch.optim.SGD):  # as on a device without fused kernels (torch raises)
        def __init__(self, params, **options) -> None:
            if options.get("fused"):
                raise RuntimeError("`fused=True` requires all the params to be on a supported device")
            super().__init__(params, **options)

    monkeypatch.setattr(torch.optim, "SGD", NoFusedSGD)
    optimizer = make_optimizer([nn.Parameter(torch.zeros(2))], OptimizerConfig())
    assert isinstance(optimizer, NoFusedSGD) and not optimizer.defaults.get("fused")


def _one_step(cfg: OptimizerConfig):
    from kdcore.config import ScheduleConfig
    from kdcore.engine.optim import make_scheduler

    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    optimizer = make_optimizer(model.parameters(), cfg)
    scheduler = make_scheduler(optimizer, ScheduleConfig(), 10, 4)
    model(torch.randn(3, 4)).sum().backward()
    optimizer.step()
    scheduler.step()
    return model, optimizer, scheduler


def test_resume_keeps_the_configured_kernel_and_hyperparameters() -> None:
    from kdcore.config import ScheduleConfig
    from kdcore.engine.optim import make_scheduler, restore_optimizer

    model, old, old_schedule = _one_step(OptimizerConfig(fused=False))  # a pre-`fused` checkpoint
    saved, saved_schedule = old.state_dict(), old_schedule.state_dict()

    # same config: the learning rate is exactly the saved one, the momentum buffer carried over
    new = make_optimizer(model.parameters(), OptimizerConfig(fused=False))
    schedule = make_scheduler(new, ScheduleConfig(), 10, 4)
    restore_optimizer(new, schedule, saved, saved_schedule)
    assert new.param_groups[0]["lr"] == old.param_groups[0]["lr"]
    assert torch.equal(new.state[model.weight]["momentum_buffer"], old.state[model.weight]["momentum_buffer"])

    # fused now (the default) and new hyperparameters: both take effect
    new = make_optimizer(model.parameters(), OptimizerConfig(lr=0.01, weight_decay=0.0))
    schedule = make_scheduler(new, ScheduleConfig(), 10, 4)
    restore_optimizer(new, schedule, saved, saved_schedule)
    group = new.param_groups[0]
    assert group["fused"] is True and group["weight_decay"] == 0.0
    assert schedule.base_lrs == [0.01] and schedule.last_epoch == 1
    assert group["lr"] == 0.01 * schedule.lr_lambdas[0](1)
    # a fused optimizer takes GradScaler's scale and inf flag: an overflowing step is skipped
    scaler = torch.amp.GradScaler("cpu")
    before = model.weight.detach().clone()
    new.zero_grad()
    scaler.scale(model(torch.randn(3, 4)).sum() * float("inf")).backward()
    scaler.step(new)
    scaler.update()
    assert torch.equal(model.weight, before)


def test_no_fused_kernel_for_complex_parameters_falls_back() -> None:
    optimizer = make_optimizer([nn.Parameter(torch.zeros(2, dtype=torch.complex64))], OptimizerConfig())
    assert not optimizer.defaults.get("fused")


def test_parameter_groups_scale_the_learning_rate_on_one_schedule() -> None:
    from kdcore.config import ScheduleConfig
    from kdcore.engine.optim import make_scheduler

    a, b = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(3))
    optimizer = make_optimizer([{"params": [a]}, {"params": [b], "lr_scale": 0.1}], OptimizerConfig(lr=0.5))
    schedule = make_scheduler(optimizer, ScheduleConfig(type="cosine"), 10, 1)
    assert [g["lr"] for g in optimizer.param_groups] == [0.5, 0.05]
    for _ in range(5):
        optimizer.step()
        schedule.step()
    first, second = (g["lr"] for g in optimizer.param_groups)
    assert second == pytest.approx(first * 0.1) and first < 0.5


def test_groups_that_miss_or_repeat_a_parameter_are_refused() -> None:
    from kdcore.engine.run import checked_groups
    from kdcore.errors import UserError

    class Groups(nn.Module):
        def __init__(self, groups) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(2, 2), nn.Linear(2, 2)
            self.groups = groups

        def trainable_parameters(self):
            return [p for p in self.parameters() if p.requires_grad]

        def parameter_groups(self):
            return self.groups(self)

    ok = Groups(lambda m: [{"params": list(m.a.parameters())}, {"params": list(m.b.parameters()), "lr_scale": 2}])
    assert len(checked_groups(ok)) == 2
    for bad in (lambda m: [{"params": list(m.a.parameters())}],
                lambda m: [{"params": list(m.parameters())}, {"params": list(m.b.parameters())}]):
        with pytest.raises(UserError, match=r"parameter_groups\(\) must hold every trainable parameter exactly once"):
            checked_groups(Groups(bad))


def test_a_checkpoint_regroups_into_the_algorithms_new_groups() -> None:
    from kdcore.config import ScheduleConfig
    from kdcore.engine.optim import make_scheduler, restore_optimizer
    from kdcore.errors import UserError

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2))
    one = make_optimizer(list(model.parameters()), OptimizerConfig())  # saved with one group
    model(torch.randn(4, 3)).sum().backward()
    one.step()
    saved = one.state_dict()
    two = make_optimizer([{"params": list(model[0].parameters())},
                          {"params": list(model[1].parameters()), "lr_scale": 0.5}], OptimizerConfig())
    schedule = make_scheduler(two, ScheduleConfig(), 10, 1)
    restore_optimizer(two, schedule, saved, make_scheduler(one, ScheduleConfig(), 10, 1).state_dict())
    assert [g["lr"] for g in two.param_groups] == [0.1, 0.05]
    for p in model.parameters():  # every momentum buffer found its parameter
        assert torch.equal(two.state[p]["momentum_buffer"], one.state[p]["momentum_buffer"])
    fewer = make_optimizer(list(model[0].parameters()), OptimizerConfig())
    with pytest.raises(UserError, match="saved with 4 parameters in 1 group"):
        restore_optimizer(fewer, make_scheduler(fewer, ScheduleConfig(), 10, 1), saved, schedule.state_dict())


def test_parameter_groups_may_be_generators() -> None:
    from kdcore.engine.run import checked_groups

    class Gen(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(2, 2), nn.Linear(2, 2)

        def trainable_parameters(self):
            return list(self.parameters())

        def parameter_groups(self):
            return [{"params": self.a.parameters()}, {"params": self.b.parameters(), "lr_scale": 2}]

    optimizer = make_optimizer(checked_groups(Gen()), OptimizerConfig())
    assert [len(g["params"]) for g in optimizer.param_groups] == [2, 2]


@pytest.mark.parametrize("cfg, expected", [
    # 10 steps an epoch, 2 epochs: 20 steps in all
    (ScheduleConfig(type="constant", warmup_epochs=0.5), {0: 0.2, 4: 1.0, 5: 1.0, 19: 1.0}),
    (ScheduleConfig(type="step", milestones=[1], gamma=0.5), {0: 1.0, 9: 1.0, 10: 0.5, 19: 0.5}),
    (ScheduleConfig(type="cosine"), {0: 1.0, 5: 0.5 * (1 + math.cos(math.pi / 4)), 10: 0.5, 20: 0.0}),
    (ScheduleConfig(type="cosine", warmup_epochs=1), {0: 0.1, 9: 1.0, 10: 1.0, 15: 0.5, 20: 0.0}),
    (ScheduleConfig(type="onecycle"), {0: 0.1, 3: 0.1 + 0.9 * 0.15 / 0.3, 6: 1.0, 13: 0.5, 20: 0.0}),
])
def test_schedules_give_their_formulas_learning_rate_factors(cfg: ScheduleConfig, expected: dict) -> None:
    factor = lr_schedule(cfg, steps_per_epoch=10, epochs=2)
    for step, value in expected.items():
        assert factor(step) == pytest.approx(value, abs=1e-12), step
